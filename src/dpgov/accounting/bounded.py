"""Bounded accounting: what an accountant may be asked to compose, decided before the work.

Composing a privacy loss distribution (PLD) costs memory and time in proportion to the number
of points of its support, and that number is known, or tightly bounded, before anything is
built. These checks run first, on every path that composes (the PLD builder, the accountants,
calibration, the audit's replay); each is cheap and none can make ε smaller: they only refuse.

1. **Domain** (:class:`AccountingInputError`, exit 2): σ in ``NOISE_MULTIPLIER_RANGE``, q at
   least ``SAMPLE_RATE_MIN``. Outside, float arithmetic breaks before accounting does (σ² or
   1/σ² overflow, q·e^x underflows to 0): 1e-300, 1e308 and 1e-320 end in OverflowError or
   ZeroDivisionError inside dp_accounting. The range is narrower than that on purpose:
   σ < 1e-6 adds noise below float32 resolution of a clipped gradient (no real noise at all),
   σ > 1e6 leaves the gradient below float32 resolution of the noise (nothing is learnt), and
   q < 1e-12 means more than 10¹² privacy units per expected sampled unit.
2. **One step's PLD** (:class:`AccountingTooCostly`, exit 1): dp_accounting's connect-the-dots
   construction puts a point at every multiple of the discretisation between the privacy
   losses at its truncation points (``GaussianPrivacyLoss.connect_dots_bounds``, the very
   numbers it uses), so the size is exact, and computing it takes microseconds. At most
   ``MAX_STEP_POINTS`` per PMF.
3. **The T-fold self-composition and every composition** (:class:`AccountingTooCostly`):
   dp_accounting truncates a T-fold FFT self-convolution to the range a Chernoff bound over
   40 orders leaves (``common.compute_self_convolve_bounds``); :class:`SelfComposition`
   computes the same bound (same orders, same tail mass) from the built one-step PMF, so the
   size of the FFT is known exactly before it runs. Composing two PMFs convolves them
   (``fftconvolve``): at most the sum of their sizes. Each at most ``MAX_POINTS``.
4. **PRV** (Opacus): its mesh covers ``[-L, L]`` at ``eps_error / sqrt(T log(12/δ') / 2)``,
   with L from RDP; at most ``MAX_PRV_POINTS`` over all distinct (σ, q).

The limits keep one charge's accounting (build, compose, ε, the ledger's cache blob) within
about 2 GB and 60 s on a 2-core machine (benchmarks/RESULTS_accounting.md): measured here, a
1.95M-point step took 18–27 s and 0.5 GB to build, a 45.6M-point self-composition 33 s and
3.4 GB, a 7.7M-point PRV 13 s and 1.6 GB. Limits are counted in points, not seconds, so that
the same mechanism is accepted or refused alike on every machine (the ledger grants, the
audit replays).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from dpgov.accounting.errors import AccountingInputError, AccountingTooCostly

NOISE_MULTIPLIER_RANGE = (1e-6, 1e6)
SAMPLE_RATE_MIN = 1e-12

MAX_STEP_POINTS = 1_000_000  # one step's PMF (each of the remove and add PMFs)
MAX_POINTS = 8_000_000  # any composed PMF, and the FFT that composes it
MAX_PRV_POINTS = 6_000_000  # PRV mesh points, summed over distinct (σ, q)
LOG_MASS_TRUNCATION = -50.0  # dp_accounting's from_gaussian_mechanism default, used by pld.py
CHERNOFF_ORDERS = 20  # dp_accounting's compute_self_convolve_bounds: orders ±1..20 / size

ADVICE = "or use the rdp accountant (an upper bound, cheap at any size)"


def check_dp_sgd_domain(*, noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Refuse (exit 2) σ or q outside the range accounting is defined on here (see above)."""
    lo, hi = NOISE_MULTIPLIER_RANGE
    if not lo <= noise_multiplier <= hi:
        raise AccountingInputError(
            f"noise_multiplier must be in [{lo:g}, {hi:g}] to be accounted, "
            f"found {noise_multiplier:.6g}"
        )
    if not SAMPLE_RATE_MIN <= sample_rate <= 1:
        raise AccountingInputError(
            f"sample_rate must be in [{SAMPLE_RATE_MIN:g}, 1] to be accounted, "
            f"found {sample_rate:.6g}"
        )
    if steps < 1:
        raise AccountingInputError(f"steps must be >= 1, found {steps!r}")


# ------------------------------------------------------------------------ one step's PLD


@functools.lru_cache(maxsize=4096)
def gaussian_step_points(sigma: float, q: float, discretization: float) -> int:
    """Points of the larger of the two PMFs (remove, add) of one Poisson-subsampled Gaussian
    step, exactly as dp_accounting's connect-the-dots construction will lay them out."""
    from dp_accounting.pld import privacy_loss_mechanism as plm

    adjacencies = [plm.AdjacencyType.REMOVE]
    if q < 1:
        adjacencies.append(plm.AdjacencyType.ADD)
    points = 0
    for adjacency in adjacencies:
        b = plm.GaussianPrivacyLoss(
            sigma,
            sampling_prob=q,
            adjacency_type=adjacency,
            log_mass_truncation_bound=LOG_MASS_TRUNCATION,
        ).connect_dots_bounds()
        upper = math.ceil(b.epsilon_upper / discretization)
        lower = math.floor(b.epsilon_lower / discretization)
        points = max(points, upper - lower + 1)
    return points


def smallest_sigma_within(q: float, discretization: float, limit: int) -> float:
    """About the smallest σ whose one-step PMF fits ``limit`` (the size falls as σ grows)."""
    lo, hi = NOISE_MULTIPLIER_RANGE
    if gaussian_step_points(hi, q, discretization) > limit:
        return math.inf
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if gaussian_step_points(mid, q, discretization) > limit:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    return hi


def check_step(sigma: float, q: float, discretization: float) -> None:
    """Refuse a one-step PLD over ``MAX_STEP_POINTS`` before dp_accounting builds it."""
    points = gaussian_step_points(sigma, q, discretization)
    if points <= MAX_STEP_POINTS:
        return
    need = smallest_sigma_within(q, discretization, MAX_STEP_POINTS)
    raise AccountingTooCostly(
        f"σ={sigma:g}, q={q:g}: one step's privacy loss distribution would need "
        f"{points:,} points at discretisation {discretization:g} (at most "
        f"{MAX_STEP_POINTS:,}, so that one charge's accounting stays within about 2 GB and "
        f"60 s): raise σ to at least {need:.3g}, {ADVICE}"
    )


# ------------------------------------------------------------------------ compositions


def dense_probs(pmf: Any) -> Any:
    """The probabilities of a PMF on its contiguous support (a sparse one made dense)."""
    return pmf.to_dense_pmf()._probs  # pylint: disable=protected-access


def pmf_span(pmf: Any) -> int:
    """Points a PMF occupies once dense (what an FFT over it allocates)."""
    probs = getattr(pmf, "_probs", None)
    if probs is not None:
        return len(probs)
    losses = pmf._loss_probs  # pylint: disable=protected-access  (a SparsePLDPmf)
    return (max(losses) - min(losses) + 1) if losses else 1


class SelfComposition:
    """dp_accounting's truncation of a T-fold self-convolution, for any T at once.

    ``common.compute_self_convolve_bounds`` bounds the support of the T-fold convolution of
    a PMF of n points to ``[max_o⁻ ⌊(T·log M(o) + log(2/τ)) / o⌋, min_o⁺ ⌈…⌉]`` over the orders
    o = ±1..±20 / n (Chernoff: the mass outside is at most τ), where M is the PMF's moment
    generating function in index units, and ``common.self_convolve`` runs an FFT of
    ``next_fast_len(max(that width, n))``. M(o) does not depend on T: computed once here
    (as many exponentials as dp_accounting computes), the bound for any T is arithmetic.
    """

    def __init__(self, probs: Any, tail_mass_truncation: float) -> None:
        import numpy as np
        from scipy import special

        self.size = len(probs)
        self.tail = tail_mass_truncation
        index = np.arange(self.size)
        orders = np.concatenate(
            (np.arange(-CHERNOFF_ORDERS, 0), np.arange(1, CHERNOFF_ORDERS + 1))
        ) / float(self.size)
        self.terms = [
            (float(order), float(special.logsumexp(index * order, b=probs))) for order in orders
        ]

    def width(self, steps: int) -> int:
        """Points of the truncated T-fold convolution (dp_accounting's ``output_len``)."""
        upper, lower = (self.size - 1) * steps, 0
        if self.tail > 0:
            slack = math.log(2 / self.tail)
            for order, log_mgf in self.terms:
                bound = (steps * log_mgf + slack) / order
                if not math.isfinite(bound):
                    continue
                if order > 0:
                    upper = min(upper, math.ceil(bound))
                else:
                    lower = max(lower, math.floor(bound))
        return upper - lower + 1

    def points(self, steps: int) -> int:
        """The FFT's length for a T-fold self-composition (before rounding to a fast size)."""
        return max(self.width(steps), self.size)

    def max_steps(self, limit: int, below: int) -> int:
        """A number of steps under ``below`` whose self-composition fits ``limit`` (0: none)."""
        if self.points(1) > limit:
            return 0
        lo, hi = 1, below
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.points(mid) <= limit:
                lo = mid
            else:
                hi = mid
        return lo


def check_self_composition(
    parts: list[SelfComposition], *, sigma: float, q: float, steps: int
) -> None:
    """Refuse a T-fold self-composition whose FFT would exceed ``MAX_POINTS``."""
    points = max(p.points(steps) for p in parts)
    if points <= MAX_POINTS:
        return
    fits = min(p.max_steps(MAX_POINTS, steps) for p in parts)
    raise AccountingTooCostly(
        f"σ={sigma:g}, q={q:g}, T={steps:,}: the composed privacy loss distribution would "
        f"need {points:,} points (at most {MAX_POINTS:,}, so that one charge's accounting "
        f"stays within about 2 GB and 60 s): lower T to at most {fits:,} at this σ and q, "
        f"or raise σ or lower q (a narrower loss), {ADVICE}"
    )


def check_composition(a: Any, b: Any) -> None:
    """Refuse composing two PLDs whose convolution would exceed ``MAX_POINTS``."""
    points = max(
        pmf_span(x) + pmf_span(y) - 1
        for x, y in ((a._pmf_remove, b._pmf_remove), (a._pmf_add, b._pmf_add))  # pylint: disable=protected-access
    )
    if points <= MAX_POINTS:
        return
    raise AccountingTooCostly(
        f"composing these charges would need a privacy loss distribution of {points:,} points "
        f"(at most {MAX_POINTS:,}, so that one charge's accounting stays within about 2 GB "
        f"and 60 s): the charges together are too wide to compose at this discretisation; "
        f"raise σ, lower q or T of the new run, {ADVICE}"
    )


def check_prv(points: int, history: list[tuple[float, float, int]]) -> None:
    """Refuse a PRV composition whose meshes would exceed ``MAX_PRV_POINTS`` in all."""
    if points <= MAX_PRV_POINTS:
        return
    runs = ", ".join(f"(σ={s:g}, q={q:g}, T={t:,})" for s, q, t in history[:3])
    more = f" and {len(history) - 3} more" if len(history) > 3 else ""
    raise AccountingTooCostly(
        f"the PRV accountant would need {points:,} mesh points for {runs}{more} (at most "
        f"{MAX_PRV_POINTS:,}, so that one charge's accounting stays within about 2 GB and "
        f"60 s): lower T, raise σ, or use the pld or rdp accountant"
    )
