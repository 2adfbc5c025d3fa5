"""The DP evaluation mechanism: calibration against independent references, the sensitivity
claim, the record's round trip, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpgov.accounting import epsilon as accounted_epsilon
from dpgov.errors import UsageError
from dpgov.gate.dp_facts import PrivateEvaluation
from dpgov.training.dp_evaluation import (
    bin_index,
    calibrate_sigma,
    count_histograms,
    evaluation_mechanism,
    gaussian_epsilon,
    release,
    release_edges,
    sensitivity,
)


def _closed_form_delta(epsilon: float, sigma: float, sens: float) -> float:
    """Balle & Wang 2018, Theorem 8, written out with scipy's normal CDF (independently of
    the module's own log-space version)."""
    from scipy.stats import norm

    return float(
        norm.cdf(sens / (2 * sigma) - epsilon * sigma / sens)
        - math.exp(epsilon) * norm.cdf(-sens / (2 * sigma) - epsilon * sigma / sens)
    )


def _pld_epsilon(noise_multiplier: float, delta: float) -> float:
    """dp_accounting's PLD of the Gaussian mechanism (GaussianDpEvent), pessimistic at 1e-4."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_event.GaussianDpEvent(noise_multiplier))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(
    ("epsilon", "delta", "sens"),
    [(0.1, 1e-5, 1.0), (0.5, 1e-5, math.sqrt(6)), (1.0, 1e-6, 2.0), (3.0, 1e-3, math.sqrt(3))],
)
def test_calibrated_sigma_meets_epsilon_exactly_by_the_closed_form_and_the_pld(
    epsilon: float, delta: float, sens: float
) -> None:
    sigma = calibrate_sigma(epsilon, delta, sens)
    # the closed form: δ(ε) at σ is at most δ, and just below σ it is above δ (tight)
    assert _closed_form_delta(epsilon, sigma, sens) <= delta * (1 + 1e-9)
    assert _closed_form_delta(epsilon, sigma * (1 - 1e-6), sens) > delta
    # dp_accounting's PLD of GaussianDpEvent(σ/Δ): an upper bound, within its discretisation
    eps_pld = _pld_epsilon(sigma / sens, delta)
    assert epsilon - 1e-6 <= eps_pld <= epsilon + 1e-3


@settings(max_examples=30, deadline=None)
@given(
    epsilon=st.floats(min_value=0.05, max_value=10.0),
    log_delta=st.floats(min_value=-12.0, max_value=-2.0),
    sens=st.floats(min_value=0.5, max_value=10.0),
)
def test_calibrated_sigma_never_overshoots_epsilon(
    epsilon: float, log_delta: float, sens: float
) -> None:
    delta = 10.0**log_delta
    sigma = calibrate_sigma(epsilon, delta, sens)
    assert _closed_form_delta(epsilon, sigma, sens) <= delta * (1 + 1e-7)
    assert gaussian_epsilon(sigma / sens, delta) <= epsilon * (1 + 1e-9)


def test_the_ledger_charge_is_the_same_gaussian_as_calibrated() -> None:
    """DP-SGD with q = 1, T = 1 (what the ledger charges) has the Gaussian's ε."""
    pe = _release(epsilon=0.5)
    mech = evaluation_mechanism(pe)
    assert (mech.sample_rate, mech.steps) == (1.0, 1)
    assert mech.noise_multiplier == pytest.approx(pe.sigma / pe.sensitivity)
    eps = accounted_epsilon([mech], delta=pe.delta, accountant="pld")
    assert pe.epsilon <= 0.5 * (1 + 1e-9)
    assert eps == pytest.approx(pe.epsilon, abs=2e-3)
    assert eps >= pe.epsilon - 1e-6  # the PLD is pessimistic


def _population(n: int = 600, seed: int = 1) -> tuple[np.ndarray, dict, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    cand = np.clip(0.25 + 0.35 * (y - 0.25) + rng.normal(0, 0.2, n), 0, 1)
    ref = np.clip(0.25 + 0.45 * (y - 0.25) + rng.normal(0, 0.2, n), 0, 1)
    sens = pd.DataFrame(
        {"sex": rng.choice(["F", "M"], n), "age_band": rng.choice(["<60", "60-69", "70+"], n)}
    )
    return y, {"candidate": cand, "reference": ref}, sens


def _release(epsilon: float = 0.5, **kw: object) -> PrivateEvaluation:
    y, scores, sens = _population()
    args: dict = {
        "threshold": 0.27,
        "epsilon": epsilon,
        "delta": 1e-5,
        "bins": 20,
        "attempt": 1,
        "test_blocks": ["test-2001"],
        "reservation_id": "r-1",
    }
    args.update(kw)
    return release(y, scores, sens, **args)


def _flat(histograms: list) -> dict:
    return {(h.model, h.label, h.attribute, h.group): np.asarray(h.counts) for h in histograms}


@pytest.mark.parametrize("which", [0, 17, 599])
def test_adding_one_patient_changes_at_most_one_count_per_histogram_family(which: int) -> None:
    """The sensitivity claim: per model, one count of the overall histogram and one per
    attribute change, each by 1, so the L2 distance is sqrt(models · (1 + attributes))."""
    y, scores, sens = _population()
    edges = release_edges(20, 0.27)
    groups = {"sex": ["F", "M"], "age_band": ["<60", "60-69", "70+"]}
    keep = np.arange(len(y)) != which
    full = _flat(count_histograms(y, scores, sens, edges=edges, groups=groups))
    less = _flat(
        count_histograms(
            y[keep],
            {m: s[keep] for m, s in scores.items()},
            sens[keep].reset_index(drop=True),
            edges=edges,
            groups=groups,
        )
    )
    assert full.keys() == less.keys()
    diffs = np.concatenate([full[k] - less[k] for k in full])
    changed = diffs[diffs != 0]
    models, attributes = len(scores), sens.shape[1]
    assert changed.size == models * (1 + attributes)
    assert set(changed.tolist()) == {1.0}
    assert float(np.linalg.norm(diffs)) == pytest.approx(sensitivity(models, attributes))
    for model in scores:  # the changed counts are the patient's own bin and class
        b = int(bin_index([scores[model][which]], edges)[0])
        assert (
            full[(model, int(y[which]), None, None)][b]
            - less[(model, int(y[which]), None, None)][b]
            == 1
        )


def test_release_records_the_mechanism_and_round_trips_through_json() -> None:
    pe = _release()
    assert pe.mechanism == "gaussian_histograms"
    assert pe.noise_source == "os_entropy"
    assert pe.sensitivity == pytest.approx(math.sqrt(2 * 3))
    assert pe.sigma == pytest.approx(calibrate_sigma(0.5, 1e-5, pe.sensitivity))
    assert pe.threshold in pe.edges and len(pe.edges) == 22  # 20 bins + the threshold edge
    assert len(pe.histograms) == 2 * 2 * (1 + 2 + 3)  # models · labels · (all + groups)
    back = PrivateEvaluation.model_validate_json(pe.model_dump_json())
    assert back == pe
    other = _release()
    assert other.histograms != pe.histograms  # a fresh draw each time


def test_noise_has_the_calibrated_scale() -> None:
    pe = _release(generator=np.random.default_rng(7))
    assert pe.noise_source == "seed"
    y, scores, sens = _population()
    exact = _flat(count_histograms(y, scores, sens, edges=pe.edges))
    noisy = _flat(pe.histograms)
    residual = np.concatenate([noisy[k] - exact[k] for k in exact])
    # 528 draws of N(0, σ²): the sample std is within 15 % of σ (about 5 standard errors)
    assert float(np.std(residual)) == pytest.approx(pe.sigma, rel=0.15)
    assert abs(float(np.mean(residual))) < 5 * pe.sigma / math.sqrt(residual.size)


def test_threshold_on_an_equal_width_edge_adds_none() -> None:
    assert release_edges(4, 0.5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert release_edges(4, 0.3) == [0.0, 0.25, 0.3, 0.5, 0.75, 1.0]
    assert bin_index([0.0, 0.2999, 0.3, 1.0], release_edges(4, 0.3)).tolist() == [0, 1, 2, 4]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"bins": 0}, "bins must be an integer >= 1"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"epsilon": 0.0}, "epsilon must be > 0"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"attempt": 0}, "attempt must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_clear_usage_error(kw: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        _release(**kw)


def test_values_outside_the_declared_subgroups_are_refused() -> None:
    with pytest.raises(UsageError, match="outside its declared subgroups"):
        _release(groups={"sex": ["F"]})


def test_declared_subgroups_are_released_even_when_empty() -> None:
    pe = _release(groups={"sex": ["F", "M", "X"]})
    assert pe.groups("sex") == ["F", "M", "X"]
