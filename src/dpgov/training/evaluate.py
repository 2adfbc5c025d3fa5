"""Utility and fairness on the held-out test split.

Overall: AUROC, accuracy, Brier score, expected calibration error (10 equal-width bins).
Per subgroup of each sensitive attribute (fairlearn ``MetricFrame``): AUROC from scores and the
false-negative rate (underdiagnosis) from 0/1 predictions, two frames, with percentile
bootstrap intervals (``n_boot`` resamples of the test rows, seeded). The intervals are
fairlearn's (``MetricFrame(n_boot=…, ci_quantiles=…, random_state=seed)``: the same resamples,
metrics and quantiles) computed without building a frame per resample, which made evaluation
the slowest step of a run after training. A gap is the largest minus
the smallest subgroup value over the groups *judged*: at least ``min_group_n`` patients and the
metric defined (both classes for AUROC, a positive for FNR). With fewer than two judged
groups a gap is reported as 0.0 with ``groups_judged`` < 2: no evidence either way.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from dpgov.gate.facts import Gap, ReferenceFacts, SubgroupMetric
from dpgov.gate.subgroups import GroupRule

CI = [0.025, 0.975]


def auroc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve; NaN when only one class is present.

    The Mann-Whitney form (ties count half), which is what ``sklearn.metrics.roc_auc_score``
    integrates, without its input validation (a few ms a call, and the bootstrap makes
    hundreds of calls)."""
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(bool)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(y_score, dtype=float))
    u = float(ranks[y].sum()) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def false_negative_rate(y_true: Any, y_pred: Any) -> float:
    """Missed positives / positives; NaN when the group has no positive (not 0 as fairlearn)."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(y_pred).astype(int)
    positives = int((y == 1).sum())
    if positives == 0:
        return float("nan")
    return float(((y == 1) & (p == 0)).sum() / positives)


def expected_calibration_error(y_true: Any, y_prob: Any, *, bins: int = 10) -> float:
    """ECE: Σ_b (n_b/n)·|mean(y in b) − mean(p in b)| over ``bins`` equal-width bins of p."""
    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(y_prob, dtype=float), 0.0, 1.0)
    if y.size == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(ece)


def brier(y_true: Any, y_prob: Any) -> float:
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(y_prob, dtype=float)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def _none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


DP_PREFIX = "dp_"
"""MLflow metric keys of DP-evaluated metrics start with it (``dp_auroc``, ``dp_auroc_lo``,
``dp_subgroup.sex.F.fnr`` …); exact test metrics never do."""


@dataclass
class Evaluation:
    """What one model scored on the test split: exact (``private`` False), or from one
    DP-evaluated release (``private`` True: :func:`from_release`; ``brier`` is NaN, not
    computable from the histograms, and never logged)."""

    n: int
    positives: int
    threshold: float
    auroc: float
    accuracy: float
    brier: float
    calibration_error: float
    auroc_lo: float | None = None
    auroc_hi: float | None = None
    subgroups: list[SubgroupMetric] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    private: bool = False
    calibration_error_hi: float | None = None
    accuracy_lo: float | None = None
    accuracy_hi: float | None = None
    noise_scale: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat metric names → values (finite values only) for MLflow; DP-evaluated ones
        prefixed :data:`DP_PREFIX` (the threshold is not a test metric: never prefixed)."""
        out = self._metrics()
        if not self.private:
            return out
        return {(k if k == "threshold" else DP_PREFIX + k): v for k, v in out.items()}

    def _metrics(self) -> dict[str, float]:
        out: dict[str, float | None] = {
            "auroc": self.auroc,
            "accuracy": self.accuracy,
            "brier": self.brier,
            "calibration_error": self.calibration_error,
            "threshold": self.threshold,
            "calibration_error_hi": self.calibration_error_hi,
            "accuracy_lo": self.accuracy_lo,
            "accuracy_hi": self.accuracy_hi,
        }
        if self.auroc_lo is not None and self.auroc_hi is not None:
            out["auroc_lo"], out["auroc_hi"] = self.auroc_lo, self.auroc_hi
        for s in self.subgroups:
            key = f"{_safe(s.attribute)}.{_safe(s.group)}"
            out[f"subgroup.{key}.n"] = float(s.n)
            if s.auroc is not None:
                out[f"subgroup.{key}.auroc"] = s.auroc
            if s.fnr is not None:
                out[f"subgroup.{key}.fnr"] = s.fnr
            if self.private:  # the DP intervals (the exact run's bootstrap ones stay in CSV)
                for m in ("auroc_lo", "auroc_hi", "fnr_lo", "fnr_hi"):
                    out[f"subgroup.{key}.{m}"] = getattr(s, m)
        for g in self.gaps:
            out[f"gap.{_safe(g.attribute)}.{g.metric}"] = g.gap
            if self.private and g.hi is not None:
                out[f"gap.{_safe(g.attribute)}.{g.metric}_hi"] = g.hi
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}

    def table(self) -> list[dict[str, Any]]:
        """The subgroup table, one row per (attribute, group)."""
        return [s.model_dump() for s in self.subgroups]


def _safe(text: str) -> str:
    """MLflow metric keys allow alphanumerics, _ - . / and space; map anything else to _."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(text))


def resolve_threshold(threshold: float | str, y: np.ndarray) -> float:
    """``prevalence``: predict positive when the score reaches the positive rate of ``y``
    (a governed run passes its validation split's labels, never the test split's:
    :mod:`dpgov.training.validation_split`)."""
    if threshold == "prevalence":
        rate = float(np.mean(y)) if len(y) else 0.5
        return min(max(rate, 1e-6), 1 - 1e-6)
    return float(threshold)


def from_release(dm: Any, threshold: float) -> Evaluation:
    """The :class:`Evaluation` of one model's :class:`~dpgov.gate.dp_metrics.DPMetrics`
    (every figure from the noisy histograms; undefined metrics NaN, never logged)."""
    nan = float("nan")
    return Evaluation(
        n=int(dm.n),
        positives=int(dm.positives),
        threshold=float(threshold),
        auroc=nan if dm.auroc is None else float(dm.auroc),
        accuracy=nan if dm.accuracy is None else float(dm.accuracy),
        brier=nan,
        calibration_error=nan if dm.calibration_error is None else float(dm.calibration_error),
        auroc_lo=dm.auroc_lo,
        auroc_hi=dm.auroc_hi,
        subgroups=list(dm.subgroups),
        gaps=list(dm.gaps),
        private=True,
        calibration_error_hi=dm.calibration_error_hi,
        accuracy_lo=dm.accuracy_lo,
        accuracy_hi=dm.accuracy_hi,
        noise_scale=dict(dm.noise_scale),
    )


def evaluate(
    y_true: Any,
    scores: Any,
    sensitive: pd.DataFrame,
    *,
    threshold: float | str = "prevalence",
    n_boot: int = 100,
    seed: int = 0,
    min_group_n: int = 30,
    min_group_positives: int = 0,
) -> Evaluation:
    """Overall and subgroup metrics of ``scores`` (probabilities) against ``y_true`` (0/1).
    Gaps are over the subgroups :class:`dpgov.gate.subgroups.GroupRule` judges (a run passes
    the policy's ``fairness.min_group_size`` and ``min_group_positives``)."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(scores, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in shape")
    cut = resolve_threshold(threshold, y)
    pred = (p >= cut).astype(int)
    ev = Evaluation(
        n=int(y.size),
        positives=int(y.sum()),
        threshold=cut,
        auroc=auroc(y, p),
        accuracy=float((pred == y).mean()) if y.size else float("nan"),
        brier=brier(y, p),
        calibration_error=expected_calibration_error(y, p),
    )
    if n_boot > 0 and y.size:
        ev.auroc_lo, ev.auroc_hi = _overall_ci(y, p, n_boot=n_boot, seed=seed)
    for attribute in sensitive.columns:
        groups = sensitive[attribute].astype(str).to_numpy()
        subs, gaps = _attribute(
            attribute,
            y,
            p,
            pred,
            groups,
            n_boot=n_boot,
            seed=seed,
            rule=GroupRule(min_group_n, min_group_positives),
        )
        ev.subgroups.extend(subs)
        ev.gaps.extend(gaps)
    return ev


def bootstrap_rows(n: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of the ``n_boot`` resamples fairlearn's ``MetricFrame`` draws for
    ``random_state=seed`` over ``n`` rows (one uint32 seed per resample from
    ``default_rng(seed)``, then ``DataFrame.sample(frac=1, replace=True, random_state=…)``)."""
    seeds = np.random.default_rng(seed).integers(
        low=0, high=np.iinfo(np.uint32).max, size=n_boot, dtype=np.uint32
    )
    return [np.random.RandomState(s).choice(n, size=n, replace=True) for s in seeds]


@dataclass
class BootstrapCI:
    """Percentile intervals (``CI``) of a metric by group and of its between-groups gap."""

    by_group: dict[str, tuple[float | None, float | None]]
    gap: tuple[float | None, float | None]


def _resampled(
    metric: Any, y: np.ndarray, values: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int
) -> tuple[list[str], np.ndarray]:
    """The group names and, per resample (rows) and group (columns), the metric of the group:
    NaN where the group is absent from the resample or the metric is undefined there."""
    names = sorted({str(g) for g in groups})
    groups = groups.astype(str)
    samples = np.full((n_boot, len(names)), np.nan)
    for b, idx in enumerate(bootstrap_rows(len(y), n_boot, seed)):
        yb, vb, gb = y[idx], values[idx], groups[idx]
        for j, g in enumerate(names):
            mask = gb == g
            if mask.any():
                samples[b, j] = metric(yb[mask], vb[mask])
    return names, samples


def bootstrap_ci(
    metric: Any, y: np.ndarray, values: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int
) -> BootstrapCI:
    """What ``MetricFrame(metrics={…: metric}, y_true=y, y_pred=values,
    sensitive_features=groups, n_boot=n_boot, ci_quantiles=CI, random_state=seed)`` gives as
    ``by_group_ci`` (quantiles over the resamples where the group's metric is defined) and
    ``difference_ci()`` (quantiles of max − min over the groups of each resample)."""
    names, samples = _resampled(metric, y, values, groups, n_boot=n_boot, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice encountered"
        lo, hi = np.nanquantile(samples, CI, axis=0)
        gaps = np.nanmax(samples, axis=1) - np.nanmin(samples, axis=1)
    gap_lo, gap_hi = np.quantile(gaps, CI)
    return BootstrapCI(
        by_group={g: (_none(lo[j]), _none(hi[j])) for j, g in enumerate(names)},
        gap=(_none(gap_lo), _none(gap_hi)),
    )


def _overall_ci(y: np.ndarray, p: np.ndarray, *, n_boot: int, seed: int) -> tuple[Any, Any]:
    """``MetricFrame(…).overall_ci`` of the AUROC."""
    _, samples = _resampled(auroc, y, p, np.zeros(len(y), dtype=int), n_boot=n_boot, seed=seed)
    lo, hi = np.quantile(samples[:, 0], CI)
    return _none(lo), _none(hi)


def _attribute(
    attribute: str,
    y: np.ndarray,
    p: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    rule: GroupRule,
) -> tuple[list[SubgroupMetric], list[Gap]]:
    """Subgroup rows and the AUROC / FNR gaps of one sensitive attribute."""
    from fairlearn.metrics import MetricFrame

    sf = pd.Series(groups, name=attribute)
    # point estimates for every group (two frames: scores for AUROC, 0/1 predictions for rates)
    scores_all = MetricFrame(metrics={"auroc": auroc}, y_true=y, y_pred=p, sensitive_features=sf)
    rates_all = MetricFrame(
        metrics={"fnr": false_negative_rate}, y_true=y, y_pred=pred, sensitive_features=sf
    )
    counts = pd.DataFrame({"g": groups, "y": y}).groupby("g")["y"].agg(["size", "sum"])

    judged = {  # the one subgroup rule (dpgov.gate.subgroups), as the gate applies it
        metric: [
            g
            for g in counts.index
            if rule.qualifies(metric, int(counts.loc[g, "size"]), int(counts.loc[g, "sum"]))
        ]
        for metric in ("auroc", "fnr")
    }
    # bootstrap intervals on the rows of judged groups (per group and for the gap)
    group_ci: dict[str, dict[str, tuple[float | None, float | None]]] = {"auroc": {}, "fnr": {}}
    gap_ci: dict[str, tuple[float | None, float | None]] = {}
    for metric, fn, y_pred in (("auroc", auroc, p), ("fnr", false_negative_rate, pred)):
        keep = np.isin(groups, judged[metric])
        if n_boot <= 0 or not keep.any():
            continue
        ci = bootstrap_ci(fn, y[keep], y_pred[keep], groups[keep], n_boot=n_boot, seed=seed)
        for g in judged[metric]:
            group_ci[metric][g] = ci.by_group[str(g)]
        if len(judged[metric]) >= 2:
            gap_ci[metric] = ci.gap

    rows: list[SubgroupMetric] = []
    for g in counts.index:
        a_lo, a_hi = group_ci["auroc"].get(g, (None, None))
        f_lo, f_hi = group_ci["fnr"].get(g, (None, None))
        rows.append(
            SubgroupMetric(
                attribute=attribute,
                group=str(g),
                n=int(counts.loc[g, "size"]),
                positives=int(counts.loc[g, "sum"]),
                auroc=_none(scores_all.by_group.loc[g, "auroc"]),
                auroc_lo=a_lo,
                auroc_hi=a_hi,
                fnr=_none(rates_all.by_group.loc[g, "fnr"]),
                fnr_lo=f_lo,
                fnr_hi=f_hi,
            )
        )
    gaps: list[Gap] = []
    kinds: list[tuple[Literal["auroc", "fnr"], Any]] = [("auroc", scores_all), ("fnr", rates_all)]
    for kind, frame_all in kinds:
        named = [(str(g), frame_all.by_group.loc[g, kind]) for g in judged[kind]]
        named = [(g, v) for g, v in named if _none(v) is not None]
        values = [v for _, v in named]
        gap = float(max(values) - min(values)) if len(values) >= 2 else 0.0
        lo, hi = gap_ci.get(kind, (None, None))
        gaps.append(
            Gap(
                attribute=attribute,
                metric=kind,
                gap=gap,
                lo=lo,
                hi=hi,
                groups_judged=len(values),
                min_group_n=rule.min_size,
                min_group_positives=rule.min_positives,
                groups=[g for g, _ in named],
            )
        )
    return rows, gaps


def reference_facts(run_id: str, ev: Evaluation) -> ReferenceFacts:
    return ReferenceFacts(run_id=run_id, auroc=ev.auroc, gaps=list(ev.gaps))


def price_of_privacy(private: Evaluation, reference: Evaluation) -> dict[str, float]:
    """What privacy cost: reference minus private AUROC, and private minus reference gaps."""
    out = {"auroc_drop": reference.auroc - private.auroc}
    ref = {(g.attribute, g.metric): g.gap for g in reference.gaps}
    for g in private.gaps:
        if (g.attribute, g.metric) in ref:
            out[f"gap_increase.{_safe(g.attribute)}.{g.metric}"] = (
                g.gap - ref[(g.attribute, g.metric)]
            )
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}
