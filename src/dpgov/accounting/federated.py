"""Site-level DP-FedAvg rounds as one patient of a site sees them (docs/federated_accounting.md).

The server of a site-level round sums the updates of the sampled sites, each clipped to L2 norm
C, adds Gaussian noise N(0, σ²C²·I) to the sum and divides by a *fixed* denominator (the expected
number of sampled sites). Removing one patient changes only that patient's site's update, and
changes it into another clipped update: the site's contribution u becomes u' with
``‖u‖, ‖u'‖ <= C``. That is the replace-one relation, with ``‖u - u'‖ <= 2C``:

- without site sampling (``sample_rate = 1``) a round is the Gaussian mechanism of sensitivity
  2C, i.e. noise multiplier σ/2 under add/remove: exactly ``DpSgdMechanism(σ/2, 1, rounds)``'s
  accounting, which is what this kind computes at q = 1;
- with Poisson site sampling at rate q, a round's output is, up to post-processing, one draw
  from μ_u = (1 - q)·N(0, σ²C²) + q·N(u, σ²C²) against μ_{u'}; its privacy loss is accounted
  with dp_accounting's pair for ``NeighboringRelation.REPLACE_ONE`` (``AdjacencyType.REPLACE``:
  (1 - q)·N(0, σ²) + q·N(-1, σ²) against (1 - q)·N(0, σ²) + q·N(1, σ²), C = 1), and its RDP with
  a closed-form bound by joint convexity (``fed_site_rdp``).

Why that pair dominates the round (the reduction to two updates in the ball, then advanced
joint convexity and Neyman–Pearson) is proved in the docs; tests/unit/test_fed_site_mechanism.py
checks it numerically. Like every kind, a
:class:`FedSiteMechanism` only records what a run did; its accounting is registered in
:mod:`dpgov.accounting.kinds`. numpy, scipy and dp_accounting are imported lazily.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from dpgov.accounting import pld
from dpgov.accounting.bounded import (
    ADVICE,
    LOG_MASS_TRUNCATION,
    MAX_STEP_POINTS,
    NOISE_MULTIPLIER_RANGE,
    SelfComposition,
    check_dp_sgd_domain,
    check_self_composition,
    dense_probs,
)
from dpgov.accounting.errors import AccountingInputError, AccountingTooCostly
from dpgov.accounting.mechanism import (
    check_gaussian_fields,
    normalise_gaussian_fields,
)

ReplaceOne = Literal["replace_one"]
WEIGHT_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True, kw_only=True)
class FedSiteMechanism:
    """``steps`` site-level DP-FedAvg rounds, as seen by one patient of one eligible site.

    ``noise_multiplier`` is σ: the noise on the *sum* of the sampled sites' clipped updates has
    standard deviation σ·C (use :func:`effective_noise_multiplier` when the server weighs sites
    unequally). ``sample_rate`` is the Poisson rate q at which each site takes part in a round
    (1.0: every site every round, no amplification). Neighbouring datasets differ by replacing
    one site's clipped update (removing a patient of it): ``neighbouring = "replace_one"``. The
    field names are DP-SGD's, so the ledger reads them alike; the meaning is this class's.
    """

    kind: ClassVar[str] = "fed_site_gaussian"
    noise_multiplier: float
    sample_rate: float
    steps: int
    neighbouring: ReplaceOne = "replace_one"

    def __post_init__(self) -> None:
        check_gaussian_fields(self)
        if self.neighbouring != "replace_one":
            raise AccountingInputError(
                f"neighbouring must be 'replace_one', found {self.neighbouring!r}"
            )
        normalise_gaussian_fields(self)

    def with_steps(self, steps: int) -> FedSiteMechanism:
        """The same rounds, a different number of them."""
        return replace(self, steps=steps)

    def to_dict(self) -> dict[str, Any]:
        """Lossless: JSON writes floats with ``repr``, which round-trips exactly."""
        return {
            "kind": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "neighbouring": self.neighbouring,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FedSiteMechanism:
        if not isinstance(data, dict) or data.get("kind") != cls.kind:
            raise AccountingInputError(f"not a {cls.kind} mechanism: {data!r}")
        unknown = set(data) - {"kind", "noise_multiplier", "sample_rate", "steps", "neighbouring"}
        if unknown:
            raise AccountingInputError(f"unknown mechanism keys: {sorted(unknown)}")
        missing = {"noise_multiplier", "sample_rate", "steps"} - set(data)
        if missing:
            raise AccountingInputError(f"missing mechanism keys: {sorted(missing)}")
        return cls(
            noise_multiplier=data["noise_multiplier"],
            sample_rate=data["sample_rate"],
            steps=data["steps"],
            neighbouring=data.get("neighbouring", "replace_one"),
        )

    def to_dp_event(self) -> Any:
        """The dp_accounting event (imported lazily).

        At q = 1: ``SelfComposed(Gaussian(σ/2), steps)``, exact under add/remove, so every
        dp_accounting accountant (PLD or RDP, default relation) gives this kind's ε. At q < 1:
        ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)``, which means these rounds
        *only* to an accountant under ``NeighboringRelation.REPLACE_ONE`` (dp_accounting's
        ``PLDAccountant(REPLACE_ONE)`` composes exactly the pair this kind is accounted with);
        under the default add/remove relation it would under-charge (sensitivity C, not 2C),
        and dp_accounting's RDP accountant refuses it under REPLACE_ONE.
        """
        from dp_accounting import dp_event

        if self.sample_rate >= 1:
            return dp_event.SelfComposedDpEvent(
                dp_event.GaussianDpEvent(self.noise_multiplier / 2), self.steps
            )
        return dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(
                self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier)
            ),
            self.steps,
        )


# ------------------------------------------------------------------------------ builders


def effective_noise_multiplier(sigma: float, weights: Sequence[float] | None) -> float:
    """σ_eff = σ / (n · w_max) for site weights ``w`` (n sites, non-negative, summing to 1).

    The server scales site i's clipped update by n·w_i before summing (equal weights: by 1), so
    replacing a patient of site i moves the sum by at most 2·n·w_i·C; against noise σ·C that
    is the Gaussian of sensitivity 2C at σ / (n·w_i). Every site is charged the worst,
    σ / (n·w_max) (= σ for equal weights, and never above σ: n·w_max >= 1).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma):
        raise AccountingInputError(f"noise_multiplier must be a finite number, found {sigma!r}")
    if sigma <= 0:
        raise AccountingInputError(f"noise_multiplier must be > 0, found {sigma!r}")
    if weights is None:
        return float(sigma)
    ws = list(weights)
    if not ws:
        raise AccountingInputError("weights must name at least one site")
    for w in ws:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise AccountingInputError(f"every weight must be a finite number >= 0, found {w!r}")
    total = math.fsum(ws)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise AccountingInputError(f"weights must sum to 1, found {total!r}")
    return float(sigma) / (len(ws) * max(ws))


def site_round_mechanism(
    *,
    noise_multiplier: float,
    site_sample_rate: float,
    rounds: int = 1,
    weights: Sequence[float] | None = None,
) -> FedSiteMechanism:
    """What ``rounds`` site-level rounds charge each patient of a charged site.

    ``noise_multiplier``: σ of the server's noise on the sum (in units of the clip C);
    ``site_sample_rate``: the Poisson rate of site sampling, 1.0 without sampling (or when
    the charge is not amplified: a site charged only when sampled pays the q = 1 cost);
    ``weights``: the server's site weights when unequal (see :func:`effective_noise_multiplier`).

    Always a :class:`FedSiteMechanism`, at q = 1 too (where its accounting is exactly
    ``DpSgdMechanism(σ_eff/2, 1, rounds)``'s): the ledger's record is the lasting statement of
    what was done, and a site-level round recorded as a DP-SGD step of half the noise would
    read, to an auditor, as record-level training it was not.
    """
    sigma = effective_noise_multiplier(noise_multiplier, weights)
    return FedSiteMechanism(noise_multiplier=sigma, sample_rate=site_sample_rate, steps=rounds)


# ---------------------------------------------------------------------------- accounting


def fed_site_domain(m: FedSiteMechanism, count: int) -> None:
    """DP-SGD's domain (:mod:`dpgov.accounting.bounded`) on σ, q and the rounds, and on σ/2
    where q = 1 (that Gaussian is what is built)."""
    check_dp_sgd_domain(
        noise_multiplier=m.noise_multiplier, sample_rate=m.sample_rate, steps=m.steps * count
    )
    lo = NOISE_MULTIPLIER_RANGE[0]
    if m.sample_rate >= 1 and m.noise_multiplier / 2 < lo:
        raise AccountingInputError(
            f"noise_multiplier must be at least {2 * lo:g} to be accounted without site "
            f"sampling (a round is then the Gaussian of σ/2), found {m.noise_multiplier:.6g}"
        )


def fed_site_pld(m: FedSiteMechanism, discretization: float, count: int) -> Any:
    """The PLD of ``count`` runs of ``m``, pessimistic, at the ledger's discretisation."""
    steps = m.steps * count
    if m.sample_rate >= 1:  # exactly the Gaussian of σ/2 (add/remove): DP-SGD's own builder
        return pld.poisson_gaussian_pld(
            noise_multiplier=m.noise_multiplier / 2,
            sample_rate=1.0,
            steps=steps,
            discretization=discretization,
        )
    return replace_one_pld(m.noise_multiplier, m.sample_rate, steps, discretization)


@functools.lru_cache(maxsize=16)
def replace_one_pld(sigma: float, q: float, steps: int, discretization: float) -> Any:
    """``steps`` self-compositions of the Poisson-subsampled Gaussian under replace-one,
    refused before the FFT when it would exceed the bounds."""
    step = replace_one_step(sigma, q, discretization)
    if steps > 1:
        part = SelfComposition(dense_probs(step._pmf_remove), pld.PLD_TAIL_MASS_TRUNCATION)  # pylint: disable=protected-access
        check_self_composition([part], sigma=sigma, q=q, steps=steps)
    return pld.self_compose(step, steps)


@functools.lru_cache(maxsize=256)
def replace_one_step(sigma: float, q: float, discretization: float) -> Any:
    """One round's PLD: dp_accounting's ``from_gaussian_mechanism`` under REPLACE_ONE (the
    pair (1-q)N(0,σ²)+qN(-1,σ²) vs (1-q)N(0,σ²)+qN(1,σ²)), symmetric, with the truncation
    pld.py uses; refused before it is built when its PMF would exceed ``MAX_STEP_POINTS``."""
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import privacy_loss_distribution as pld_dist

    points = replace_one_step_points(sigma, q, discretization)
    if points > MAX_STEP_POINTS:
        raise AccountingTooCostly(
            f"σ={sigma:g}, q={q:g}: one site-level round's privacy loss distribution would "
            f"need {points:,} points at discretisation {discretization:g} (at most "
            f"{MAX_STEP_POINTS:,}, so that one charge's accounting stays within about 2 GB and "
            f"60 s): raise σ, {ADVICE}"
        )
    return pld_dist.from_gaussian_mechanism(
        standard_deviation=sigma,
        sampling_prob=q,
        value_discretization_interval=discretization,
        log_mass_truncation_bound=LOG_MASS_TRUNCATION,
        neighboring_relation=NeighboringRelation.REPLACE_ONE,
        pessimistic_estimate=True,
    )


def replace_one_step_points(sigma: float, q: float, discretization: float) -> int:
    """Points of one round's PMF, as dp_accounting's connect-the-dots will lay them out."""
    from dp_accounting.pld import privacy_loss_mechanism as plm

    b = plm.GaussianPrivacyLoss(
        sigma,
        sampling_prob=q,
        adjacency_type=plm.AdjacencyType.REPLACE,
        log_mass_truncation_bound=LOG_MASS_TRUNCATION,
    ).connect_dots_bounds()
    return (
        math.ceil(b.epsilon_upper / discretization)
        - math.floor(b.epsilon_lower / discretization)
        + 1
    )


def fed_site_rdp_round(sigma: float, q: float, order: float) -> float:
    """An upper bound on one round's RDP at ``order`` α > 1 (exact at q = 1):
    log(1 - q + q·exp((α-1)·2α/σ²)) / (α - 1).

    exp((α-1)·D_α(P‖Q)) = ∫ P^α Q^(1-α) is jointly convex in (P, Q) (the perspective of t^α;
    van Erven and Harremoës 2014, Thm 13), so for P = (1-q)·N(0) + q·N(u), Q = (1-q)·N(0) +
    q·N(u') it is at most (1-q)·1 + q·exp((α-1)·α‖u-u'‖²/(2σ²)), and ‖u-u'‖ <= 2 (C = 1).
    This holds for any u, u' in the ball, not only for the one-dimensional pair the PLD uses.
    """
    if isinstance(order, bool) or not isinstance(order, int | float) or not order > 1:
        raise AccountingInputError(f"every Rényi order must be > 1, found {order!r}")
    if math.isinf(order):
        return math.inf
    x = (order - 1.0) * 2.0 * order / (sigma * sigma)
    if q >= 1:
        return x / (order - 1.0)
    a, b = math.log1p(-q), math.log(q) + x  # log(1-q + q e^x) = logaddexp(a, b), no overflow
    hi, lo = max(a, b), min(a, b)
    return (hi + math.log1p(math.exp(lo - hi))) / (order - 1.0)


def fed_site_rdp(m: FedSiteMechanism, orders: Sequence[float], count: int) -> list[float]:
    """RDP of ``count`` runs of ``m``: additive over rounds (Mironov 2017, Prop. 1)."""
    n = m.steps * count
    return [n * fed_site_rdp_round(m.noise_multiplier, m.sample_rate, a) for a in orders]


# --------------------------------------------------------------------------- lower bound

LOWER_GRID = 200
LOWER_ROUNDS = 3
LOWER_WINDOW = 4000


def fed_site_lower_bound(ms: Sequence[FedSiteMechanism], delta: float) -> float:
    """A valid lower bound on ε at ``delta``: the best, over the mechanisms, of a hypothesis
    test on the sum of one mechanism's T rounds (a composition costs at least any part).

    The accounted pair, composed T times, projected on the replaced direction: the sum is
    K·(+1) + sZ against K·(-1) + sZ with K ~ Binomial(T, q) in both worlds and s = σ√T. For
    S = {sum > τ}: P[S] >= Σ_window P[K=k]·Φ̄((τ-k)/s) (dropping terms lowers it) and
    P'[S] <= Σ_window P[K=k]·Φ̄((τ+k)/s) + P[K outside the window] (an upper bound), so
    log((P[S] - δ) / P'[S]) <= ε of the pair, which the pessimistic PLD never undercuts.
    """
    by: dict[tuple[float, float], int] = {}
    for m in ms:
        by[(m.noise_multiplier, m.sample_rate)] = (
            by.get((m.noise_multiplier, m.sample_rate), 0) + m.steps
        )
    return max((_replace_sum_test(s, q, t, delta) for (s, q), t in by.items()), default=0.0)


@functools.lru_cache(maxsize=1024)
def _replace_sum_test(sigma: float, q: float, steps: int, delta: float) -> float:
    import numpy as np
    from scipy import special, stats

    s = sigma * math.sqrt(steps)
    mean, sd = steps * q, math.sqrt(steps * q * (1 - q))
    hi = min(steps, math.ceil(mean + 20 * sd + 20))
    lo = max(0, math.floor(mean - 20 * sd - 20), hi - LOWER_WINDOW + 1)
    k = np.arange(lo, hi + 1, dtype=float)
    pmf = stats.binom.pmf(k, steps, q) if q < 1 else (k == steps).astype(float)
    outside = float(stats.binom.cdf(lo - 1, steps, q) + stats.binom.sf(hi, steps, q))
    outside = max(outside, 0.0) if q < 1 else 0.0
    keep = pmf > 0
    k, log_pmf = k[keep], np.log(pmf[keep])
    log_delta = math.log(delta)
    top = float(k[-1]) + s * float(-special.ndtri(delta))
    lo_t, hi_t, best = -float(k[-1]) - 2 * s, top, 0.0
    for _ in range(LOWER_ROUNDS):
        tau = np.linspace(lo_t, hi_t, LOWER_GRID)
        log_p = special.logsumexp(
            log_pmf[None, :] + special.log_ndtr((k - tau[:, None]) / s), axis=1
        )
        log_q_in = special.logsumexp(
            log_pmf[None, :] + special.log_ndtr((-k - tau[:, None]) / s), axis=1
        )
        log_q = np.logaddexp(log_q_in, math.log(outside)) if outside > 0 else log_q_in
        bound = np.full(LOWER_GRID, -np.inf)
        ok = log_p > log_delta
        bound[ok] = log_p[ok] + np.log(-np.expm1(log_delta - log_p[ok])) - log_q[ok]
        i = int(np.argmax(bound))
        best = max(best, float(bound[i]))
        lo_t, hi_t = float(tau[max(i - 1, 0)]), float(tau[min(i + 1, LOWER_GRID - 1)])
    return best


__all__ = [
    "FedSiteMechanism",
    "effective_noise_multiplier",
    "fed_site_domain",
    "fed_site_lower_bound",
    "fed_site_pld",
    "fed_site_rdp",
    "fed_site_rdp_round",
    "site_round_mechanism",
]
