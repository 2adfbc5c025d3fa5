"""Metrics and their intervals from a DP-evaluated release (pure; numpy imported lazily).

Everything here is post-processing of the recorded noisy histograms
(:class:`dpgov.gate.dp_facts.PrivateEvaluation`): deterministic, so the gate, promotion and
previews recompute the same figures and never draw noise. Estimates use the noisy counts as
released (negative ones included: the estimators are then unbiased or ratio-consistent, where
clipping at 0 would bias every sparse bin upwards); metrics are clipped to
[0, 1]. docs/evaluation.md states the construction and its sources.

Intervals are asymptotic (normal) and cover sampling and noise together: for a metric with
estimate m, sampling variance v_s (estimated from the noisy counts) and noise variance v_n
(σ² times the squared gradient of m in the counts, the delta method), ``lo = m − q·√(v_s+v_n)``
is a lower bound and ``hi = m + q·√(v_s+v_n)`` an upper bound at failure probability η each,
q = Φ⁻¹(1 − η). η is *measured*, not guaranteed (benchmarks/RESULTS_dp_eval.md).

- AUROC: Mann-Whitney over the bins (a tie within a bin counts half): the AUROC of the binned
  score. Sampling variance: DeLong's structural components over the bins.
- False-negative rate at the threshold (an edge of the bins): missed / all positives. Bounds:
  a score interval widened for the noise (:func:`_fnr`), which never divides by a noisy count.
- Calibration error: ECE over the release's bins with each bin's midpoint as its confidence;
  ``calibration_error_hi`` adds half the widest bin, so that it bounds the usual ECE (mean
  score per bin) over the same bins.
- Accuracy at the threshold: correct / all.
- The overall metrics use the overall histograms combined with each attribute's subgroup
  sums (least squares, :func:`_combined_overall`): noise variance σ²/W instead of σ².
- Subgroups: AUROC and FNR with bounds at η each; judged (``GroupRule``) on the *noisy* n and
  positives.
- Gaps over the judged subgroups, upper bound at η: AUROC from the pairwise differences
  (:func:`_gap_bounds`), FNR from the subgroups' score bounds by MOVER
  (:func:`_fnr_gap_bounds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from dpgov.errors import UsageError
from dpgov.gate.dp_facts import PrivateEvaluation
from dpgov.gate.facts import Gap, SubgroupMetric
from dpgov.gate.subgroups import GroupRule

_MAX_ATTEMPTS = 1_000_000
_FNR_GRID = 4000  # FNR bounds to 1/4000 (rounded outwards: the grid's outermost kept points)


class DPMetrics(BaseModel):
    """The metrics of one model from a release, with bounds at ``eta_check`` per bound.

    ``noise_scale``: the standard deviation of each metric due to the noise alone (the
    delta method), keyed ``auroc``, ``calibration_error``, ``accuracy``,
    :func:`subgroup_key` and :func:`gap_key`. ``n`` and ``positives`` are the noisy counts
    of the whole test split (rounded, at least 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    eta_check: float
    n: int
    positives: int
    auroc: float | None
    auroc_lo: float | None
    auroc_hi: float | None
    calibration_error: float | None
    calibration_error_hi: float | None
    accuracy: float | None
    accuracy_lo: float | None
    accuracy_hi: float | None
    subgroups: list[SubgroupMetric]
    gaps: list[Gap]
    noise_scale: dict[str, float]


def subgroup_key(attribute: str, group: str, metric: str) -> str:
    return f"subgroup.{attribute}.{group}.{metric}"


def gap_key(attribute: str, metric: str) -> str:
    return f"gap.{attribute}.{metric}"


def eta_per_check(eta: float, checks: int, attempt: int) -> float:
    """The failure probability of one check of the ``attempt``-th release on the same test
    blocks: η · 6/(π² k²) for attempt k (these sum to η over all attempts, Σ 1/k² = π²/6),
    split evenly over the release's ``checks`` (Bonferroni)."""
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not 0 < eta < 1:
        raise UsageError(f"evaluation eta must be in (0, 1), found {eta!r}")
    if isinstance(checks, bool) or not isinstance(checks, int) or checks < 1:
        raise UsageError(f"checks must be an integer >= 1, found {checks!r}")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise UsageError(f"attempt must be an integer >= 1, found {attempt!r}")
    if attempt > _MAX_ATTEMPTS:
        raise UsageError(f"attempt must be <= {_MAX_ATTEMPTS:_}, found {attempt!r}")
    return float(eta) * 6.0 / (math.pi**2 * attempt**2) / checks


def _quantile(eta: float) -> float:
    """Φ⁻¹(1 − η): the one-sided normal quantile."""
    return NormalDist().inv_cdf(1.0 - eta)


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


# --------------------------------------------------------------------------- one histogram


def _auroc(neg: Any, pos: Any, sigma: float) -> tuple[float, float, float] | None:
    """(AUROC, sampling variance, noise variance) of the binned score from the noisy class
    counts as released (not clipped at 0: the Mann-Whitney count is bilinear in the two
    classes' counts, whose noises are independent, so it stays unbiased)."""
    import numpy as np

    n0, n1 = float(neg.sum()), float(pos.sum())
    if n0 <= 1 or n1 <= 1:
        return None
    below = np.cumsum(neg) - neg
    above = n1 - np.cumsum(pos)
    v10 = (below + neg / 2) / n0  # per positive in bin b: share of negatives it outranks
    v01 = (above + pos / 2) / n1  # per negative in bin b: share of positives above it
    a = float((pos * v10).sum() / n1)
    w1, w0 = np.maximum(pos, 0), np.maximum(neg, 0)  # weights of the sampling variance
    var_s = float((w1 * (v10 - a) ** 2).sum() / max(n1 - 1, 1) / n1) + float(
        (w0 * (v01 - a) ** 2).sum() / max(n0 - 1, 1) / n0
    )
    var_n = sigma**2 * (
        float(((v10 - a) ** 2).sum()) / n1**2 + float(((v01 - a) ** 2).sum()) / n0**2
    )
    return _clip01(a), var_s, var_n


def _fnr(pos: Any, cut: int, sigma: float, q: float) -> tuple[float, float, float, float] | None:
    """(FNR, noise variance, lower, upper bound at q) at the threshold edge.

    The bounds are a score (Wilson / Fieller) interval widened for the noise: at the true
    rate f, ``(1 − f)·M − f·K`` (M missed, K caught, both noisy) has mean 0 and variance
    ``N1·f(1 − f)`` (binomial, given the N1 positives) plus ``σ²((1 − f)²·b_M + f²·b_K)``
    (b_M, b_K bins below and at or above the threshold), so the bounds are the smallest and
    largest f on a grid of [0, 1] with ``|(1 − f)M − fK| ≤ q·sd(f)``. No noisy count is
    divided by: a noisy N1 that happens to be large (which is also what makes a small
    subgroup judged) does not shrink the interval, as the delta method's 1/N1 would."""
    import numpy as np

    missed, caught = float(pos[:cut].sum()), float(pos[cut:].sum())
    n1 = missed + caught
    if n1 <= 0:
        return None
    bins = len(pos)
    var_n = sigma**2 * (cut * caught**2 + (bins - cut) * missed**2) / n1**4
    f = np.linspace(0.0, 1.0, _FNR_GRID + 1)
    num = (1 - f) * missed - f * caught
    var = n1 * f * (1 - f) + sigma**2 * ((1 - f) ** 2 * cut + f**2 * (bins - cut))
    kept = f[np.abs(num) <= q * np.sqrt(var)]
    lo, hi = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 1.0)
    return _clip01(missed / n1), var_n, lo, hi


def _accuracy(neg: Any, pos: Any, cut: int, sigma: float) -> tuple[float, float, float] | None:
    n = float(neg.sum() + pos.sum())
    if n <= 0:
        return None
    right = float(neg[:cut].sum() + pos[cut:].sum())
    acc = _clip01(right / n)
    var_s = acc * (1 - acc) / n
    bins = len(neg)
    # d acc / d count: (1 - acc)/n for counts that are right, -acc/n for the others
    var_n = sigma**2 * bins * ((1 - acc) ** 2 + acc**2) / n**2
    return acc, var_s, var_n


def _ece(neg: Any, pos: Any, mids: Any, sigma: float) -> tuple[float, float, float] | None:
    import numpy as np

    n_b = neg + pos
    n = float(n_b.sum())
    if n <= 0:
        return None
    d = pos - mids * n_b
    e = float(np.abs(d).sum() / n)
    s = np.sign(d)
    w_b = np.maximum(neg, 0) + np.maximum(pos, 0)
    rate = np.maximum(pos, 0) / np.where(w_b > 0, w_b, 1)
    var_s = float((w_b * rate * (1 - rate)).sum()) / n**2
    var_n = sigma**2 * float((((s * (1 - mids) - e) ** 2) + ((s * mids + e) ** 2)).sum()) / n**2
    return e, var_s, var_n


# --------------------------------------------------------------------------- the release


def _counts(pe: PrivateEvaluation, model: str, attribute: str | None, group: str | None) -> Any:
    import numpy as np

    neg = np.asarray(pe.histogram(model, 0, attribute, group), dtype=float)
    pos = np.asarray(pe.histogram(model, 1, attribute, group), dtype=float)
    return neg, pos


def _combined_overall(pe: PrivateEvaluation, model: str) -> tuple[Any, Any, float]:
    """The overall class counts of ``model`` combined with every attribute's subgroup sums,
    and the noise std per combined count.

    Each attribute's subgroups partition the test patients, so the sum of its G subgroup
    histograms is a second estimate of the overall histogram, with noise variance G·σ² per
    bin (independent of the overall histogram's σ² and of the other attributes'). The least-
    squares estimate under these constraints weights them by their precisions:
    ``T = (o + Σ_a S_a/G_a) / W`` with ``W = 1 + Σ_a 1/G_a``, noise variance σ²/W per bin
    (σ²/1.75 for sex and four age bands). Subgroup metrics keep their own histograms: the
    constrained subgroup estimates would be correlated across subgroups, which the gap bounds
    assume they are not."""
    neg, pos = _counts(pe, model, None, None)
    weight = 1.0
    for attribute in pe.attributes:
        groups = pe.groups(attribute)
        if not groups:
            continue
        sums = [_counts(pe, model, attribute, g) for g in groups]
        neg = neg + sum(c[0] for c in sums) / len(groups)
        pos = pos + sum(c[1] for c in sums) / len(groups)
        weight += 1.0 / len(groups)
    return neg / weight, pos / weight, pe.sigma / math.sqrt(weight)


def _noisy_total(x: Any) -> int:
    return max(0, round(float(x.sum())))


def _bounds(value: float, var: float, q: float) -> tuple[float, float]:
    half = q * math.sqrt(max(var, 0.0))
    return _clip01(value - half), _clip01(value + half)


def _cut(pe: PrivateEvaluation) -> int:
    """Index of the threshold edge: bins below it are the predicted negatives."""
    return min(range(len(pe.edges)), key=lambda i: abs(pe.edges[i] - pe.threshold))


def dp_metrics(
    pe: PrivateEvaluation,
    *,
    model: str,
    eta_check: float,
    min_group_n: int,
    min_group_positives: int,
) -> DPMetrics:
    """The metrics of ``model`` in ``pe`` with bounds at ``eta_check`` (module docstring)."""
    import numpy as np

    if model not in pe.models:
        raise UsageError(f"model {model!r} is not in the release (it holds {pe.models})")
    if isinstance(eta_check, bool) or not 0 < eta_check < 1:
        raise UsageError(f"eta_check must be in (0, 1), found {eta_check!r}")
    sigma, cut = pe.sigma, _cut(pe)
    edges = np.asarray(pe.edges, dtype=float)
    mids = (edges[:-1] + edges[1:]) / 2
    half_bin = float((edges[1:] - edges[:-1]).max()) / 2
    q = _quantile(eta_check)
    noise: dict[str, float] = {}

    neg, pos, sigma_all = _combined_overall(pe, model)
    n_total = _noisy_total(neg + pos)
    positives = min(n_total, _noisy_total(pos))

    auroc = auroc_lo = auroc_hi = None
    au = _auroc(neg, pos, sigma_all)
    if au is not None:
        auroc = au[0]
        auroc_lo, auroc_hi = _bounds(au[0], au[1] + au[2], q)
        noise["auroc"] = math.sqrt(au[2])
    ece = ece_hi = None
    ec = _ece(neg, pos, mids, sigma_all)
    if ec is not None:
        ece = ec[0]
        ece_hi = min(1.0, ec[0] + q * math.sqrt(ec[1] + ec[2]) + half_bin)
        noise["calibration_error"] = math.sqrt(ec[2])
    acc = acc_lo = acc_hi = None
    ac = _accuracy(neg, pos, cut, sigma_all)
    if ac is not None:
        acc = ac[0]
        acc_lo, acc_hi = _bounds(ac[0], ac[1] + ac[2], q)
        noise["accuracy"] = math.sqrt(ac[2])

    rule = GroupRule(min_group_n, min_group_positives)
    subgroups: list[SubgroupMetric] = []
    gaps: list[Gap] = []
    for attribute in pe.attributes:
        rows, attr_gaps = _attribute(pe, model, attribute, rule, eta_check, sigma, cut, noise)
        subgroups.extend(rows)
        gaps.extend(attr_gaps)
    return DPMetrics(
        model=model,
        eta_check=eta_check,
        n=n_total,
        positives=positives,
        auroc=auroc,
        auroc_lo=auroc_lo,
        auroc_hi=auroc_hi,
        calibration_error=ece,
        calibration_error_hi=ece_hi,
        accuracy=acc,
        accuracy_lo=acc_lo,
        accuracy_hi=acc_hi,
        subgroups=subgroups,
        gaps=gaps,
        noise_scale=noise,
    )


def _gap_bounds(groups: list[tuple[float, float]], eta: float) -> tuple[float, float]:
    """Bounds on the gap max_g μ_g − min_g μ_g from each judged subgroup's (centre, variance).

    Upper: the true gap is μ_i − μ_j for one pair (i, j) fixed by the population, and
    ``hi = max over ordered pairs of c_i − c_j + q_η·√(v_i + v_j)`` is at least that pair's
    own upper bound, which fails with probability η: no correction over pairs is needed.
    Lower: every pair's lower bound must hold, so q is Bonferroni-corrected over the k(k−1)
    ordered pairs. (Subgroup estimates are independent: disjoint patients, independent
    noise.)"""
    k = len(groups)
    q_hi, q_lo = _quantile(eta), _quantile(eta / (k * (k - 1)))
    pairs = [(a, b) for i, a in enumerate(groups) for j, b in enumerate(groups) if i != j]
    hi = max(a[0] - b[0] + q_hi * math.sqrt(a[1] + b[1]) for a, b in pairs)
    lo = max(a[0] - b[0] - q_lo * math.sqrt(a[1] + b[1]) for a, b in pairs)
    return max(0.0, lo), min(1.0, hi)


@dataclass(frozen=True)
class _FnrSides:
    """One judged subgroup's FNR: the point, and its score bounds at η, at η over the
    ordered pairs (for the gap's lower bound) and at η/2 (for truncated pairs)."""

    f: float
    lo: float
    hi: float
    lo_pairs: float
    hi_pairs: float
    lo_half: float
    hi_half: float


_EDGE = 1e-9


def _fnr_gap_bounds(sides: list[_FnrSides]) -> tuple[float, float]:
    """Bounds on the FNR gap. The true gap is μ_i − μ_j for one ordered pair fixed by the
    population, so the upper bound is the largest over ordered pairs of a bound on that
    pair's difference at η, by MOVER (Newcombe 1998, method 10; Zou and Donner 2008):
    ``f_i − f_j + √((hi_i − f_i)² + (f_j − lo_j)²)`` from the two score intervals, which need
    not be symmetric. MOVER reads a half-width as a standard error, which a score interval
    stopped at 1 (or 0) no longer is: for such a pair the bound is ``hi_i − lo_j`` from bounds
    at η/2 each (a union bound, valid whenever the subgroups' bounds are). The lower bound:
    the largest pairwise MOVER lower limit from bounds Bonferroni-corrected over the k(k − 1)
    ordered pairs."""
    hi = lo = 0.0
    for i, a in enumerate(sides):
        for j, b in enumerate(sides):
            if i == j:
                continue
            if a.hi >= 1 - _EDGE or b.lo <= _EDGE:
                hi = max(hi, a.hi_half - b.lo_half)
            else:
                up = max(0.0, a.hi - a.f) ** 2 + max(0.0, b.f - b.lo) ** 2
                hi = max(hi, a.f - b.f + math.sqrt(up))
            down = max(0.0, a.f - a.lo_pairs) ** 2 + max(0.0, b.hi_pairs - b.f) ** 2
            lo = max(lo, a.f - b.f - math.sqrt(down))
    return max(0.0, lo), min(1.0, hi)


def _attribute(
    pe: PrivateEvaluation,
    model: str,
    attribute: str,
    rule: GroupRule,
    eta_check: float,
    sigma: float,
    cut: int,
    noise: dict[str, float],
) -> tuple[list[SubgroupMetric], list[Gap]]:
    """Subgroup rows and the AUROC / FNR gaps of one attribute."""
    stats: dict[str, dict[str, Any]] = {}
    for g in pe.groups(attribute):
        neg, pos = _counts(pe, model, attribute, g)
        n = _noisy_total(neg + pos)
        stats[g] = {
            "n": n,
            "positives": min(n, _noisy_total(pos)),
            "auroc": _auroc(neg, pos, sigma),
            "pos": pos,
        }
    judged: dict[str, list[str]] = {
        metric: [
            g
            for g, s in stats.items()
            if rule.qualifies(metric, s["n"], s["positives"])
            and (s["auroc"] is not None if metric == "auroc" else float(s["pos"].sum()) > 0)
        ]
        for metric in ("auroc", "fnr")
    }
    q = _quantile(eta_check)
    bounds: dict[tuple[str, str], tuple[float, float]] = {}
    points: dict[tuple[str, str], float] = {}
    scales: dict[tuple[str, str], float] = {}
    centres: dict[tuple[str, str], tuple[float, float]] = {}  # AUROC: (centre, variance)
    sides: dict[str, _FnrSides] = {}
    k_fnr = len(judged["fnr"])
    q_pairs = _quantile(eta_check / max(1, k_fnr * (k_fnr - 1)))
    q_half = _quantile(eta_check / 2)
    for g, s in stats.items():
        if s["auroc"] is not None:
            a, var_s, var_n = s["auroc"]
            points[(g, "auroc")], scales[(g, "auroc")] = a, math.sqrt(var_n)
            if g in judged["auroc"]:
                bounds[(g, "auroc")] = _bounds(a, var_s + var_n, q)
                centres[(g, "auroc")] = (a, var_s + var_n)
        fn = _fnr(s["pos"], cut, sigma, q)
        if fn is not None:
            points[(g, "fnr")], scales[(g, "fnr")] = fn[0], math.sqrt(fn[1])
            if g in judged["fnr"]:
                bounds[(g, "fnr")] = (fn[2], fn[3])
                strict = _fnr(s["pos"], cut, sigma, q_pairs)  # for the gap's lower bound
                half = _fnr(s["pos"], cut, sigma, q_half)  # for truncated pairs
                assert strict is not None and half is not None
                sides[g] = _FnrSides(fn[0], fn[2], fn[3], strict[2], strict[3], half[2], half[3])
    rows: list[SubgroupMetric] = []
    for g, s in stats.items():
        a_lo, a_hi = bounds.get((g, "auroc"), (None, None))
        f_lo, f_hi = bounds.get((g, "fnr"), (None, None))
        rows.append(
            SubgroupMetric(
                attribute=attribute,
                group=g,
                n=s["n"],
                positives=s["positives"],
                auroc=points.get((g, "auroc")),
                auroc_lo=a_lo,
                auroc_hi=a_hi,
                fnr=points.get((g, "fnr")),
                fnr_lo=f_lo,
                fnr_hi=f_hi,
            )
        )
        for metric in ("auroc", "fnr"):
            if (g, metric) in scales:
                noise[subgroup_key(attribute, g, metric)] = scales[(g, metric)]
    gaps: list[Gap] = []
    kinds: tuple[Literal["auroc", "fnr"], ...] = ("auroc", "fnr")
    for metric in kinds:
        names = judged[metric]
        gap, lo, hi = 0.0, None, None
        if len(names) >= 2:
            values = {g: points[(g, metric)] for g in names}
            top, bottom = max(values, key=values.__getitem__), min(values, key=values.__getitem__)
            gap = values[top] - values[bottom]
            if metric == "auroc":
                lo, hi = _gap_bounds([centres[(g, metric)] for g in names], eta_check)
            else:
                lo, hi = _fnr_gap_bounds([sides[g] for g in names])
            noise[gap_key(attribute, metric)] = math.hypot(
                scales[(top, metric)], scales[(bottom, metric)]
            )
        gaps.append(
            Gap(
                attribute=attribute,
                metric=metric,
                gap=gap,
                lo=lo,
                hi=hi,
                groups_judged=len(names),
                min_group_n=rule.min_size,
                min_group_positives=rule.min_positives,
                groups=list(names),
            )
        )
    return rows, gaps
