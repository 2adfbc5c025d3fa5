"""Composition against closed forms and the worked example in STACK_NOTES."""

import math

import pytest
from scipy.stats import norm

from dpgov.accounting import (
    AccountingInputError,
    DpSgdMechanism,
    compose,
    epsilon,
    get_accountant,
)

EXAMPLE = [
    DpSgdMechanism(noise_multiplier=1.1, sample_rate=256 / 60000, steps=2345),
    DpSgdMechanism(noise_multiplier=0.9, sample_rate=512 / 60000, steps=1000),
    DpSgdMechanism(noise_multiplier=1.5, sample_rate=1024 / 60000, steps=600),
]


def gaussian_delta(eps: float, mu: float) -> float:
    """Closed form of the Gaussian mechanism with sensitivity/σ = mu (Balle & Wang 2018)."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


def test_pld_matches_the_known_composition_of_three_runs():
    eps = epsilon(EXAMPLE, delta=1e-5, accountant="pld")
    assert eps == pytest.approx(2.533, abs=0.002)


def test_composition_is_far_tighter_than_the_naive_sum():
    composed = epsilon(EXAMPLE, delta=1e-5)
    naive = sum(epsilon([m], delta=1e-5) for m in EXAMPLE)
    assert composed < 0.7 * naive


def test_rdp_is_looser_than_pld_but_an_upper_bound():
    assert epsilon(EXAMPLE, delta=1e-5, accountant="rdp") > epsilon(EXAMPLE, delta=1e-5)


def test_full_batch_gaussian_matches_the_closed_form():
    # q = 1, T steps of σ compose to one Gaussian with μ = sqrt(T)/σ.
    sigma, steps, delta = 4.0, 9, 1e-5
    eps = epsilon(
        [DpSgdMechanism(noise_multiplier=sigma, sample_rate=1.0, steps=steps)], delta=delta
    )
    mu = math.sqrt(steps) / sigma
    assert gaussian_delta(eps, mu) <= delta * 1.001  # never optimistic
    assert gaussian_delta(eps - 0.01, mu) > delta  # and tight to 0.01


def test_epsilon_then_delta_round_trips():
    acc = get_accountant("pld")
    state = compose(EXAMPLE, acc)
    eps = acc.epsilon(state, 1e-5)
    assert state.get_delta_for_epsilon(eps) == pytest.approx(1e-5, rel=0.02)


def test_grouping_identical_runs_equals_composing_them_one_by_one():
    m = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    acc = get_accountant("pld")
    one_by_one = acc.empty()
    for _ in range(5):
        one_by_one = acc.add(one_by_one, m)
    assert acc.epsilon(one_by_one, 1e-5) == pytest.approx(epsilon([m] * 5, delta=1e-5), rel=1e-3)


@pytest.mark.parametrize("name", ["pld", "rdp", "prv"])
def test_state_serialisation_round_trips(name):
    acc = get_accountant(name)
    state = compose(EXAMPLE, acc)
    back = acc.loads(acc.dumps(state))
    assert acc.epsilon(back, 1e-5) == acc.epsilon(state, 1e-5)


def test_no_mechanisms_cost_nothing():
    assert epsilon([], delta=1e-5) == 0.0


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, float("nan")])
def test_delta_outside_the_open_unit_interval_is_refused(delta):
    with pytest.raises(AccountingInputError, match=r"delta must be in \(0, 1\)"):
        epsilon(EXAMPLE, delta=delta)


def test_unknown_accountant_is_refused():
    with pytest.raises(AccountingInputError, match="unknown accountant 'gdp'"):
        epsilon(EXAMPLE, delta=1e-5, accountant="gdp")
