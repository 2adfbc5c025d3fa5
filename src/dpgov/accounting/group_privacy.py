"""Group privacy of image-level DP-SGD, computed tightly: what a patient with ``k`` images pays.

Image-level DP-SGD samples every image independently with probability ``q`` and clips each
image's gradient to ``C``. Adding or removing a patient with ``k`` images then adds or removes
``j ~ Bin(k, q)`` clipped gradients in a step, each of norm at most ``C``, in the worst case all
pointing the same way: the step's output under the larger dataset is the mixture
``Σ_j Bin(k, q)_j · N(jC, σ²C²)`` against ``N(0, σ²C²)`` under the smaller one (the
mixture-of-Gaussians mechanism, Ganesh & Zhao and the "MoG" PLD of dp_accounting,
arXiv:2310.15526, ``MixtureOfGaussiansDpEvent``). ``T`` steps are its ``T``-fold
self-composition, under the add-or-remove-one relation, built by dp_accounting's PLD
accountant (pessimistic: ε is never underestimated). For ``k = 1`` it is exactly the
Poisson-subsampled Gaussian (sensitivities 0 and 1 with probabilities ``1 - q`` and ``q``).

This is far below the generic group-privacy bound (``k·ε`` at ``k·e^{(k-1)ε}·δ``), and still
above patient-level DP-SGD at the same noise, which clips a patient's summed gradient to ``C``
and so pays the ordinary subsampled Gaussian at the patient sample rate
(:mod:`dpgov.training.patient_level`). ``benchmarks/bench_patient_level.py`` tabulates both.
"""

from __future__ import annotations

import math
from typing import Any

from dpgov.accounting.errors import AccountingInputError
from dpgov.accounting.pld import PLD_DISCRETIZATION

MAX_GROUP_SIZE = 1000  # records per patient (the contract's ceiling, data.contract)


def group_event(*, sigma: float, q: float, steps: int, k: int) -> Any:
    """The dp_accounting event of ``steps`` image-level DP-SGD steps seen by a patient with
    ``k`` images: the self-composed mixture of Gaussians ``Σ_j Bin(k, q)_j N(j, σ²)``
    (sensitivities in units of ``C``)."""
    import dp_accounting
    from dp_accounting.dp_event import MixtureOfGaussiansDpEvent

    _check(sigma=sigma, q=q, steps=steps, k=k)
    probs = [math.comb(k, j) * q**j * (1.0 - q) ** (k - j) for j in range(k + 1)]
    sens = [float(j) for j in range(k + 1)]
    keep = [(s, p) for s, p in zip(sens, probs, strict=True) if p > 0.0]
    total = sum(p for _s, p in keep)
    step = MixtureOfGaussiansDpEvent(
        standard_deviation=float(sigma),
        sensitivities=[s for s, _p in keep],
        sampling_probs=[p / total for _s, p in keep],
    )
    return dp_accounting.SelfComposedDpEvent(step, steps)


def group_privacy_epsilon(
    sigma: float,
    q: float,
    steps: int,
    k: int,
    delta: float,
    *,
    discretization: float = PLD_DISCRETIZATION,
) -> float:
    """ε at ``delta`` for a patient with ``k`` images under image-level DP-SGD (noise
    multiplier ``sigma``, image sample rate ``q``, ``steps`` steps), by the PLD of the
    mixture of Gaussians (tight, pessimistic)."""
    from dp_accounting.pld import pld_privacy_accountant

    if not 0 < delta < 1:
        raise AccountingInputError(f"delta must be in (0, 1), found {delta!r}")
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=discretization)
    accountant.compose(group_event(sigma=sigma, q=q, steps=steps, k=k))
    return float(accountant.get_epsilon(delta))


def group_privacy_delta(
    sigma: float,
    q: float,
    steps: int,
    k: int,
    epsilon: float,
    *,
    discretization: float = PLD_DISCRETIZATION,
) -> float:
    """δ at ``epsilon`` of the same mechanism as :func:`group_privacy_epsilon`."""
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=discretization)
    accountant.compose(group_event(sigma=sigma, q=q, steps=steps, k=k))
    return float(accountant.get_delta(epsilon))


def naive_group_epsilon(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """The generic group-privacy bound: (ε, δ)-DP per record gives
    (kε, k·e^{(k-1)ε}·δ)-DP for ``k`` records (Dwork & Roth 2014, Lemma 2.2 and its
    approximate-DP form). Shown beside the tight figure only to say how loose it is."""
    if k < 1:
        raise AccountingInputError(f"k must be >= 1, found {k!r}")
    return k * epsilon, k * math.exp((k - 1) * epsilon) * delta


def _check(*, sigma: float, q: float, steps: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_GROUP_SIZE:
        raise AccountingInputError(
            f"k (images per patient) must be 1..{MAX_GROUP_SIZE}, found {k!r}"
        )
    if not math.isfinite(sigma) or sigma <= 0:
        raise AccountingInputError(f"noise_multiplier must be > 0 and finite, found {sigma!r}")
    if not math.isfinite(q) or not 0 < q <= 1:
        raise AccountingInputError(f"sample_rate must be in (0, 1], found {q!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AccountingInputError(f"steps must be an integer >= 1, found {steps!r}")
