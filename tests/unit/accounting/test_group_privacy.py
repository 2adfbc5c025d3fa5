"""Image-level group privacy, computed tightly (dpgov.accounting.group_privacy), against references:
k = 1 is the Poisson-subsampled Gaussian (dp_accounting's own event), one step of the mixture
against a Monte-Carlo estimate of its hockey-stick divergence, and the generic k·ε bound above."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpgov.accounting.errors import AccountingInputError
from dpgov.accounting.group_privacy import (
    group_privacy_delta,
    group_privacy_epsilon,
    naive_group_epsilon,
)


def _poisson_gaussian_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=COARSE)
    acc.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
    )
    return float(acc.get_epsilon(delta))


# The mixture's PLD is slow to build (seconds per step PMF on this CPU): coarse intervals here,
# the fine ones in benchmarks/bench_patient_level.py.
COARSE = 1e-3


def test_one_image_per_patient_is_the_subsampled_gaussian():
    sigma, q, steps = 1.0, 0.05, 50
    ours = group_privacy_epsilon(sigma, q, steps, 1, 1e-5, discretization=COARSE)
    ref = _poisson_gaussian_epsilon(sigma, q, steps, 1e-5)
    assert ours == pytest.approx(ref, rel=1e-2)


def _monte_carlo_delta(sigma: float, q: float, k: int, eps: float, n: int) -> tuple[float, float]:
    """One step: max over both directions of E[(1 - e^{ε - L})_+], with its standard error."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(12345)
    j = np.arange(k + 1)
    w = np.array([math.comb(k, i) * q**i * (1 - q) ** (k - i) for i in j])

    def log_ratio(x: np.ndarray) -> np.ndarray:  # log p_mix(x) / p_0(x)
        terms = (2 * x[:, None] * j[None, :] - j[None, :] ** 2) / (2 * sigma**2)
        return logsumexp(terms, b=w[None, :], axis=1)

    # remove: x from the mixture; add: x from N(0, σ²) with the loss reversed
    comp = rng.choice(k + 1, size=n, p=w)
    x_mix = rng.normal(comp.astype(float), sigma)
    x_0 = rng.normal(0.0, sigma, size=n)
    out = []
    for vals in (
        np.clip(1 - np.exp(eps - log_ratio(x_mix)), 0, None),
        np.clip(1 - np.exp(eps + log_ratio(x_0)), 0, None),
    ):
        out.append((float(vals.mean()), float(vals.std() / math.sqrt(n))))
    return max(out)


def test_one_step_matches_monte_carlo():
    sigma, q, k, eps = 1.0, 0.3, 3, 0.5
    mc, se = _monte_carlo_delta(sigma, q, k, eps, 400_000)
    pld = group_privacy_delta(sigma, q, 1, k, eps, discretization=COARSE)
    assert mc > 1e-3  # the check has something to compare
    assert pld >= mc - 4 * se  # pessimistic: never below the truth
    assert pld <= mc + 4 * se + 0.02 * mc  # and tight


def test_more_images_cost_more_and_stay_within_the_generic_bound():
    sigma, q, steps, delta = 1.2, 0.02, 100, 1e-5
    eps = [group_privacy_epsilon(sigma, q, steps, k, delta, discretization=COARSE) for k in (1, 3)]
    assert eps[0] < eps[1]
    # the generic bound (3ε, 3e^{2ε}δ) holds for any mechanism, so the tight δ at 3ε is below
    naive_eps, naive_delta = naive_group_epsilon(eps[0], delta, 3)
    tight = group_privacy_delta(sigma, q, steps, 3, naive_eps, discretization=COARSE)
    assert tight < naive_delta / 2  # and well below it (4.3e-5 against 1.9e-4, measured)


def test_bad_group_size_is_refused():
    with pytest.raises(AccountingInputError, match="k \\(images per patient\\)"):
        group_privacy_epsilon(1.0, 0.1, 10, 0, 1e-5)
