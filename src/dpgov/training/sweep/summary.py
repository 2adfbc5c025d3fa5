"""A sweep's summary: one row per ε with the seeds pooled, then the non-private reference.

A cell is the mean over seeds, with the seeds' bootstrap 95% bounds averaged and the standard
deviation over seeds (two seeds or more).
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

from dpgov.training.sweep.results import ReferenceResult, TrialResult

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.training.evaluate import Evaluation


def group_order(group: str) -> tuple[int, str]:
    """Bands such as ``<60`` before ``60-69``; otherwise alphabetical."""
    return (0 if group.startswith("<") else 1, group)


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def interval(points: list[Any], los: list[Any], his: list[Any]) -> dict[str, Any]:
    """Mean over seeds; the seeds' bootstrap 95% bounds averaged; sd over seeds (n >= 2)."""
    pts, lo, hi = _finite(points), _finite(los), _finite(his)
    return {
        "mean": statistics.fmean(pts) if pts else None,
        "lo": statistics.fmean(lo) if lo and len(lo) == len(pts) else None,
        "hi": statistics.fmean(hi) if hi and len(hi) == len(pts) else None,
        "sd": statistics.stdev(pts) if len(pts) >= 2 else None,
        "n": len(pts),
    }


def _summary_row(
    label: str, epsilon: float | None, evs: list[Evaluation], extra: dict[str, Any]
) -> dict[str, Any]:
    first = evs[0]
    attributes = list(dict.fromkeys(s.attribute for s in first.subgroups))
    ordered = sorted(
        first.subgroups, key=lambda s: (attributes.index(s.attribute), group_order(s.group))
    )
    subgroups = []
    for s in ordered:
        same = [
            next(x for x in ev.subgroups if (x.attribute, x.group) == (s.attribute, s.group))
            for ev in evs
        ]
        subgroups.append(
            {
                "attribute": s.attribute,
                "group": s.group,
                "n": s.n,
                "positives": s.positives,
                "auroc": interval(
                    [x.auroc for x in same], [x.auroc_lo for x in same], [x.auroc_hi for x in same]
                ),
                "fnr": interval(
                    [x.fnr for x in same], [x.fnr_lo for x in same], [x.fnr_hi for x in same]
                ),
            }
        )
    gaps = []
    for g in first.gaps:
        same_g = [
            next(x for x in ev.gaps if (x.attribute, x.metric) == (g.attribute, g.metric))
            for ev in evs
        ]
        gaps.append(
            {
                "attribute": g.attribute,
                "metric": g.metric,
                "groups_judged": min(x.groups_judged for x in same_g),
                "gap": interval(
                    [x.gap for x in same_g], [x.lo for x in same_g], [x.hi for x in same_g]
                ),
            }
        )
    return {
        "variant": label,
        "epsilon": epsilon,
        **extra,
        "seeds": len(evs),
        "auroc": interval(
            [e.auroc for e in evs], [e.auroc_lo for e in evs], [e.auroc_hi for e in evs]
        ),
        "calibration_error": interval([e.calibration_error for e in evs], [], []),
        "accuracy": interval([e.accuracy for e in evs], [], []),
        "brier": interval([e.brier for e in evs], [], []),
        "subgroups": subgroups,
        "gaps": gaps,
    }


def summarise(trials: list[TrialResult], reference: ReferenceResult | None) -> list[dict[str, Any]]:
    """One row per ε (seeds pooled) in increasing ε, then the non-private reference."""
    rows = []
    for eps in sorted({t.trial.epsilon for t in trials}):
        mine = [t for t in trials if t.trial.epsilon == eps]
        rows.append(
            _summary_row(
                f"ε={eps:g}",
                eps,
                [t.evaluation for t in mine],
                {
                    "epsilon_spent": max(t.epsilon_spent for t in mine),
                    "noise_multiplier": mine[0].trial.mechanism.noise_multiplier,
                    "runs": [t.run_id for t in mine],
                },
            )
        )
    if reference is not None:
        rows.append(
            _summary_row(
                "non-private",
                None,
                [reference.evaluation],
                {"epsilon_spent": None, "noise_multiplier": None, "runs": [reference.run_id]},
            )
        )
    return rows


def summary_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A summary row flattened for CSV: ``name``, ``name_lo``, ``name_hi``, ``name_sd``."""
    out: dict[str, Any] = {
        "variant": row["variant"],
        "epsilon": row["epsilon"],
        "epsilon_spent": row["epsilon_spent"],
        "noise_multiplier": row["noise_multiplier"],
        "seeds": row["seeds"],
    }

    def put(name: str, iv: dict[str, Any]) -> None:
        out[name] = iv["mean"]
        out[f"{name}_lo"], out[f"{name}_hi"], out[f"{name}_sd"] = iv["lo"], iv["hi"], iv["sd"]

    for key in ("auroc", "calibration_error", "accuracy", "brier"):
        put(key, row[key])
    for s in row["subgroups"]:
        put(f"subgroup_auroc.{s['attribute']}.{s['group']}", s["auroc"])
    for g in row["gaps"]:
        put(f"gap_{g['metric']}.{g['attribute']}", g["gap"])
    return out
