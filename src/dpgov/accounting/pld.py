"""Privacy loss distributions (dp_accounting, imported lazily): the settings and the one
construction of a DP-SGD PLD that the ledger's accountant and the audit's replay both use.

A DP-SGD run ``(σ, q, T)`` is the T-fold self-composition of one Poisson-subsampled Gaussian
step, under the add-or-remove-one relation, with pessimistic discretisation (ε is never
underestimated). Building the one-step PLD dominates the cost and does not depend on T, so it
is built once per ``(σ, q, discretisation)`` and process; the T-step PLD of the last few runs
is cached too (calibration and multi-block reservations compose the same candidate run with
several priors).

Every construction is bounded first (:mod:`dpgov.accounting.bounded`): the one-step PMF's
size is checked before it is built, the T-fold FFT's size before it runs, and a composition's
before it convolves; what would exceed the limits is refused with
:class:`~dpgov.accounting.AccountingTooCostly`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from dpgov.accounting.bounded import (
    SelfComposition,
    check_composition,
    check_self_composition,
    check_step,
    dense_probs,
)

# PLD discretisation of the privacy loss, at about half the cost of dp_accounting's default 1e-4.
# The pessimistic error is not a fixed share of ε: each step's loss is rounded up, and the
# rounding accumulates over the steps, most where q is small (one step's loss spans few
# intervals). Measured at ε ≈ 0.37, δ = 1e-5 against a 4-10×-finer pessimistic PLD (itself an
# upper bound on the true ε; tests/unit/accounting/test_pld_discretisation.py): 0.1 % at
# q = 1e-3, T = 3,000; 3.3 % at q = 1e-4, T = 1e5 (once, against 1e-5, not in the suite:
# 0.9 % at q = 3e-4, T = 3e4; 12 % at q = 1e-4, T = 3e5). Within 1 % for q >= 1e-3 and
# T <= 3,000 (tests/property). Always too high, never too low.
PLD_DISCRETIZATION = 2e-4
PLD_TAIL_MASS_TRUNCATION = 1e-15


def identity(discretization: float = PLD_DISCRETIZATION) -> Any:
    """The PLD of no mechanism (composing with it changes nothing)."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    return pld.identity(value_discretization_interval=discretization)


def compose(a: Any, b: Any) -> Any:
    """The composition of two PLDs, truncating negligible tail mass (pessimistically).
    Refused when the convolution would exceed the bounds."""
    check_composition(a, b)
    return a.compose(b, PLD_TAIL_MASS_TRUNCATION)


@functools.lru_cache(maxsize=16)
def poisson_gaussian_pld(
    *, noise_multiplier: float, sample_rate: float, steps: int, discretization: float
) -> Any:
    """PLD of ``steps`` Poisson-subsampled Gaussian steps (the one-step PLD self-composed),
    refused before the self-composition when its FFT would exceed the bounds."""
    step = poisson_gaussian_step(noise_multiplier, sample_rate, discretization)
    if steps > 1:
        check_self_composition(
            _self_compositions(noise_multiplier, sample_rate, discretization),
            sigma=noise_multiplier,
            q=sample_rate,
            steps=steps,
        )
    return self_compose(step, steps)


@functools.lru_cache(maxsize=64)
def _self_compositions(sigma: float, q: float, discretization: float) -> list[SelfComposition]:
    """The truncation bounds of the step's PMFs (remove, and add where it differs)."""
    step = poisson_gaussian_step(sigma, q, discretization)
    # pylint: disable=protected-access
    pmfs = [step._pmf_remove] if step._symmetric else [step._pmf_remove, step._pmf_add]
    return [SelfComposition(dense_probs(p), PLD_TAIL_MASS_TRUNCATION) for p in pmfs]


def self_compose(step: Any, steps: int) -> Any:
    """``step`` self-composed ``steps`` times, as ``PrivacyLossDistribution.self_compose``
    does, except for how a sparse PMF chooses its path (see :func:`_self_compose_pmf`)."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    # pylint: disable=protected-access
    remove = _self_compose_pmf(step._pmf_remove, steps)
    if step._symmetric:
        return pld.PrivacyLossDistribution(remove)
    return pld.PrivacyLossDistribution(remove, _self_compose_pmf(step._pmf_add, steps))


def _self_compose_pmf(pmf: Any, steps: int) -> Any:
    """dp_accounting self-composes a sparse PMF of n points by composing it step by step while
    n**T <= 1000, and densely (one FFT) beyond. It evaluates n**T exactly, a T·log2(n)-bit
    integer (minutes for T = 1e9), and a one-point PMF (n**T = 1) is composed T times over:
    σ = 100, q = 1e-9, T = 1e9 ran for minutes. Here the same test is made without the big
    integer, and a one-point PMF goes dense (an FFT of length 1: the same point mass)."""
    from dp_accounting.pld import pld_pmf

    if steps > 1 and isinstance(pmf, pld_pmf.SparsePLDPmf):
        n = pmf.size
        limit = pld_pmf._MAX_PMF_SPARSE_SIZE  # pylint: disable=protected-access
        if n <= 1 or steps * math.log2(n) > 64 or n**steps > limit:
            pmf = pmf.to_dense_pmf()
    return pmf.self_compose(steps, PLD_TAIL_MASS_TRUNCATION)


@functools.lru_cache(maxsize=512)
def poisson_gaussian_step(sigma: float, q: float, discretization: float) -> Any:
    """PLD of one Poisson-subsampled Gaussian step (noise σ·C, sampling rate q, add or
    remove one privacy unit), with pessimistic estimates; refused before it is built when
    its PMF would exceed the bounds."""
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import privacy_loss_distribution as pld

    check_step(sigma, q, discretization)

    return pld.from_gaussian_mechanism(
        standard_deviation=sigma,
        sampling_prob=q,
        value_discretization_interval=discretization,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        pessimistic_estimate=True,
    )
