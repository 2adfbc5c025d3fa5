"""The one-run audit bound (Steinke, Nasr, Jagielski 2023) against independent references:
closed forms at δ = 0 (the Clopper–Pearson lower limit, the all-right ceiling), figures
measured with jax_privacy.auditing (STACK_NOTES), monotonicity, and simulated ε-DP and
(ε, δ)-DP randomized-response canary games whose bound may exceed the true ε at most β of
the time."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from dpgov.accounting.audit_bound import (
    best_of,
    ceiling,
    default_grid,
    epsilon_lower_bound,
    guess,
    p_value,
)
from dpgov.accounting.errors import AccountingInputError


def _clopper_pearson_eps(r: int, v: int, beta: float) -> float:
    """δ = 0: P[Bin(r, p) >= v] = I_p(v, r - v + 1), so the p with tail β is a beta quantile."""
    p = stats.beta.ppf(beta, v, r - v + 1)
    return max(0.0, float(special.logit(p)))


@pytest.mark.parametrize(("r", "v"), [(50, 40), (100, 70), (500, 300), (20, 20), (1000, 990)])
def test_delta_zero_is_the_binomial_tail(r: int, v: int) -> None:
    got = epsilon_lower_bound(canaries=2 * r, guesses=r, correct=v, delta=0.0)
    assert got == pytest.approx(_clopper_pearson_eps(r, v, 0.05), abs=1e-6)


@pytest.mark.parametrize("m", [10, 100, 1000, 10_000])
def test_ceiling_closed_form_at_delta_zero(m: int) -> None:
    r = m // 2
    p = 0.05 ** (1 / r)
    assert ceiling(canaries=m, guesses=r, delta=0.0) == pytest.approx(
        math.log(p / (1 - p)), abs=1e-6
    )


def test_figures_measured_with_jax_privacy() -> None:
    # STACK_NOTES "Auditing and filters": δ 1e-5, 95 %, 1,000 canaries, 500 guesses
    assert ceiling(canaries=1000, guesses=500, delta=1e-5) == pytest.approx(5.09, abs=0.005)
    eps = epsilon_lower_bound(canaries=1000, guesses=500, correct=450, delta=1e-5)
    assert eps == pytest.approx(1.95, abs=0.005)


@pytest.mark.parametrize("m", [100, 1000, 10_000])
def test_ceiling_grows_with_canaries_and_delta_lowers_it(m: int) -> None:
    lo = ceiling(canaries=m, guesses=m // 2, delta=1e-5)
    assert lo < ceiling(canaries=10 * m, guesses=5 * m, delta=1e-5)
    assert lo < ceiling(canaries=m, guesses=m // 2, delta=0.0)
    # no number of right guesses exceeds the ceiling
    for v in range(0, m // 2 + 1, max(1, m // 20)):
        assert epsilon_lower_bound(canaries=m, guesses=m // 2, correct=v, delta=1e-5) <= lo


def test_monotone_in_correct_confidence_and_delta() -> None:
    m, r = 1000, 200
    bounds = [
        epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=1e-5) for v in range(r + 1)
    ]
    assert all(a <= b for a, b in itertools.pairwise(bounds))
    assert bounds[100] == 0.0  # half right: nothing shown
    assert bounds[-1] > 0
    at_95 = epsilon_lower_bound(canaries=m, guesses=r, correct=180, delta=1e-5)
    at_99 = epsilon_lower_bound(canaries=m, guesses=r, correct=180, delta=1e-5, confidence=0.99)
    assert at_99 < at_95
    assert epsilon_lower_bound(canaries=m, guesses=r, correct=180, delta=1e-3) < at_95


@given(
    r=st.integers(1, 300),
    frac=st.floats(0, 1),
    eps=st.floats(0, 8),
    delta=st.sampled_from([0.0, 1e-6, 1e-4]),
)
@settings(max_examples=60, deadline=None)
def test_p_value_grows_with_epsilon(r: int, frac: float, eps: float, delta: float) -> None:
    v = round(frac * r)
    a = p_value(canaries=2 * r, guesses=r, correct=v, epsilon=eps, delta=delta)
    b = p_value(canaries=2 * r, guesses=r, correct=v, epsilon=eps + 0.25, delta=delta)
    assert 0 <= a <= b + 1e-12 <= 1 + 1e-12


def _rr_game(rng: np.random.Generator, *, m: int, r: int, eps: float, delta: float, trials: int):
    """Right guesses of ``r`` per trial in an (ε, δ)-DP randomized-response canary game: each
    canary is in with probability ½; with probability δ the mechanism reveals it, otherwise
    it answers truthfully with probability e^ε/(1+e^ε); the auditor guesses its answer."""
    included = rng.random((trials, m)) < 0.5
    truthful = rng.random((trials, m)) < special.expit(eps)
    leaked = rng.random((trials, m)) < delta
    answer = np.where(truthful | leaked, included, ~included)
    return (answer[:, :r] == included[:, :r]).sum(axis=1)


@given(
    seed=st.integers(0, 2**32 - 1),
    eps=st.floats(0.1, 3.0),
    r=st.integers(20, 200),
    delta=st.sampled_from([0.0, 1e-3]),
)
@settings(max_examples=12, deadline=None)
def test_bound_exceeds_the_true_epsilon_at_most_beta_of_the_time(
    seed: int, eps: float, r: int, delta: float
) -> None:
    trials, beta = 1000, 0.05
    rng = np.random.default_rng(seed)
    m = 2 * r
    right = _rr_game(rng, m=m, r=r, eps=eps, delta=delta, trials=trials)
    cache: dict[int, float] = {}
    over = 0
    for v in right.tolist():
        if v not in cache:
            cache[v] = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta)
        over += cache[v] > eps
    # β plus four binomial standard deviations of the frequency (a false alarm ~ 3e-5)
    assert over / trials <= beta + 4 * math.sqrt(beta * (1 - beta) / trials)


def test_the_game_is_detected_when_the_claim_is_false() -> None:
    # the same game at true ε 3 falsifies a claim of ε 1 almost always (the test has power)
    rng = np.random.default_rng(7)
    right = _rr_game(rng, m=2000, r=1000, eps=3.0, delta=0.0, trials=50)
    bounds = [
        epsilon_lower_bound(canaries=2000, guesses=1000, correct=v, delta=1e-5) for v in right
    ]
    assert min(bounds) > 1.0


def test_guess_takes_top_and_bottom_scores() -> None:
    scores = [0.9, 0.1, 0.8, 0.2, 0.5, 0.6]
    included = [True, False, True, True, False, False]
    assert guess(scores, included, 4) == (4, 3)  # in: 0.9, 0.8 (right); out: 0.1 (right), 0.2
    assert guess(scores, included, 0) == (0, 0)


def test_best_of_pays_for_the_grid() -> None:
    rng = np.random.default_rng(3)
    included = rng.random(1000) < 0.5
    scores = included * 3.0 + rng.normal(size=1000)
    one = best_of(scores.tolist(), included.tolist(), grid=(100,), delta=1e-5)
    four = best_of(scores.tolist(), included.tolist(), grid=(100, 100, 100, 100), delta=1e-5)
    assert four.epsilon_lower_bound < one.epsilon_lower_bound <= one.ceiling
    assert one.guesses == 100 and one.correct == guess(scores, included, 100)[1]
    assert default_grid(1000) == (50, 100, 200, 500)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"canaries": 0, "guesses": 0, "correct": 0}, "canaries"),
        ({"canaries": 10, "guesses": 11, "correct": 0}, "guesses"),
        ({"canaries": 10, "guesses": 5, "correct": 6}, "correct"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "delta": 1.0}, "delta"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "confidence": 1.0}, "confidence"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict[str, float], match: str) -> None:
    kwargs = {"delta": 0.0, **kwargs}
    with pytest.raises(AccountingInputError, match=match):
        epsilon_lower_bound(**kwargs)  # type: ignore[arg-type]
