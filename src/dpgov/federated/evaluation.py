"""Federated evaluation: each site scores the global model on its own test split, and the site
becomes one more fairness attribute (does the model fail the smallest hospital?).

Per site (:func:`evaluate_site`): the governed run's evaluation
(:func:`dpgov.training.evaluate.evaluate`) on the site's local test split: AUROC, accuracy and
the subgroup table of every sensitive attribute within the site, with the one subgroup rule
(:mod:`dpgov.gate.subgroups`). The threshold turning scores into predictions is, unless given,
the site's *training* prevalence: never its test labels, as the governed run takes its
validation split's, and a site holds no validation split here.

Across sites (:func:`federated_fairness`): the sites' test rows pooled, with ``site`` as a
sensitive attribute and each site's rows predicted at that site's threshold. The AUROC and
the false-negative rate per site and their gaps come from the same code path as the governed
run's subgroup table (fairlearn ``MetricFrame`` per attribute, the same :class:`GroupRule`),
so a site is judged exactly as a subgroup is: at least ``min_group_n`` test rows and
``min_group_positives`` positives, and the metric defined. The worst site is the judged one
with the lowest AUROC (highest FNR); it is compared with the smallest site (fewest training
patients, else fewest test rows). The within-site attributes (sex, age band, ...) are also
judged pooled across sites.

The metrics are exact test-split statistics, not DP releases (as the governed run's exact
evaluation): the per-site table tells the federation each site's test counts and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.federated.local import LocalData, build_site_model, set_arrays
from dpgov.gate.subgroups import GroupRule
from dpgov.training.evaluate import _attribute, _none, evaluate, resolve_threshold
from dpgov.training.trainer import predict_scores

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from dpgov.federated.types import FederatedSpec

SITE_ATTRIBUTE = "site"
MIN_GROUP_N = 30  # the policy's fairness.min_group_size default
MIN_GROUP_POSITIVES = 10  # the policy's fairness.min_group_positives default

Scores = tuple[np.ndarray, np.ndarray, "pd.DataFrame"]  # (labels 0/1, scores, sensitive)


@dataclass
class SiteEvaluation:
    """The global model on one site's local test split."""

    site: str
    n: int  # test rows
    auroc: float | None  # None when the site's test split holds one class only
    accuracy: float
    positives: int
    subgroups: list[dict[str, Any]]  # within the site, one row per (attribute, group)
    threshold: float = 0.5  # predictions are score >= threshold
    fnr: float | None = None  # None without a positive
    gaps: list[dict[str, Any]] = field(default_factory=list)  # within-site gaps (Gap dumps)
    train_patients: int | None = None  # the site's training patients (its size)
    data_version: str | None = None


def site_scores(arrays: list[np.ndarray], data: LocalData, spec: FederatedSpec) -> Scores:
    """(labels, probabilities, sensitive columns) of the model ``arrays`` on the site's test
    split: what :func:`federated_fairness` takes per site."""
    model = build_site_model(spec, data)
    set_arrays(model, arrays)
    scores = predict_scores(model, data.test.x)
    return data.test.y.astype(int), scores, data.test.sensitive


def _fnr(y: np.ndarray, pred: np.ndarray) -> float | None:
    positives = int((y == 1).sum())
    return None if positives == 0 else float(((y == 1) & (pred == 0)).sum() / positives)


def evaluate_site(
    site: str,
    arrays: list[np.ndarray],
    data: LocalData,
    spec: FederatedSpec,
    *,
    threshold: float | None = None,
    min_group_n: int = MIN_GROUP_N,
    min_group_positives: int = MIN_GROUP_POSITIVES,
    n_boot: int = 0,
    seed: int = 0,
) -> SiteEvaluation:
    """The global model ``arrays`` on ``site``'s local test split. ``threshold`` None: the
    site's training prevalence. ``n_boot`` > 0 adds the governed run's bootstrap intervals."""
    y, scores, sensitive = site_scores(arrays, data, spec)
    cut = resolve_threshold("prevalence", data.train.y) if threshold is None else threshold
    ev = evaluate(
        y,
        scores,
        sensitive,
        threshold=float(cut),
        n_boot=n_boot,
        seed=seed,
        min_group_n=min_group_n,
        min_group_positives=min_group_positives,
    )
    pred = (scores >= ev.threshold).astype(int)
    return SiteEvaluation(
        site=site,
        n=ev.n,
        auroc=_none(ev.auroc),
        accuracy=float(ev.accuracy),
        positives=ev.positives,
        subgroups=ev.table(),
        threshold=ev.threshold,
        fnr=_fnr(y, pred),
        gaps=[g.model_dump() for g in ev.gaps],
        train_patients=len(np.unique(data.train.patient_id)),
        data_version=data.version,
    )


def _pooled(
    evals: list[SiteEvaluation], scores: dict[str, Scores], threshold: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Pooled labels, scores, predictions (each site at its threshold), sites, sensitive."""
    import pandas as pd

    names = [e.site for e in evals]
    if len(set(names)) != len(names):
        raise ValueError(f"federated evaluation: a site is evaluated twice ({names})")
    if set(names) != set(scores):
        raise ValueError(
            f"federated evaluation: evaluations of {sorted(names)} but scores of {sorted(scores)}"
        )
    columns: list[str] | None = None
    ys, ps, preds, sites, frames = [], [], [], [], []
    for e in evals:
        y, p, sensitive = scores[e.site]
        y = np.asarray(y).astype(int)
        p = np.asarray(p, dtype=float)
        if not (len(y) == len(p) == len(sensitive) == e.n):
            raise ValueError(
                f"federated evaluation: site {e.site!r} was evaluated on {e.n} rows but its "
                f"scores hold {len(y)} labels, {len(p)} scores, {len(sensitive)} rows"
            )
        if columns is None:
            columns = list(sensitive.columns)
        elif list(sensitive.columns) != columns:
            raise ValueError(
                f"federated evaluation: site {e.site!r} has sensitive columns "
                f"{list(sensitive.columns)}, the first site {columns}"
            )
        cut = e.threshold if threshold is None else threshold
        ys.append(y)
        ps.append(p)
        preds.append((p >= cut).astype(int))
        sites.append(np.full(len(y), e.site, dtype=object))
        frames.append(sensitive.astype(str).reset_index(drop=True))
    sensitive_all = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return (
        np.concatenate(ys),
        np.concatenate(ps),
        np.concatenate(preds),
        np.concatenate(sites).astype(str),
        sensitive_all,
    )


def _smallest(evals: list[SiteEvaluation]) -> tuple[str, str]:
    """(the smallest site, by what): fewest training patients when every site says, else
    fewest test rows; ties go to the first named."""
    if all(e.train_patients is not None for e in evals):
        return min(evals, key=lambda e: (e.train_patients or 0, e.site)).site, "train_patients"
    return min(evals, key=lambda e: (e.n, e.site)).site, "test_rows"


def federated_fairness(
    evals: list[SiteEvaluation],
    scores: dict[str, Scores],
    *,
    threshold: float | None = None,
    min_group_n: int = MIN_GROUP_N,
    min_group_positives: int = MIN_GROUP_POSITIVES,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The site as a fairness attribute, and the within-site attributes pooled across sites.

    ``scores``: per site, (labels, scores, sensitive columns) on its test split
    (:func:`site_scores`). ``threshold`` None: each site's rows at its evaluation's threshold.
    Returns ``sites`` (one subgroup row per site, the governed run's row plus ``threshold``,
    ``train_patients``, ``judged``), ``gaps`` (AUROC and FNR between judged sites), ``worst``
    (per metric: the worst judged site, its value, whether it is the smallest), ``smallest_site``,
    ``smallest_by``, ``rule`` and ``pooled`` (``subgroups`` and ``gaps`` of each within-site
    attribute over all sites' rows)."""
    if not evals:
        raise ValueError("federated evaluation: no site evaluations")
    y, p, pred, sites, sensitive = _pooled(evals, scores, threshold)
    rule = GroupRule(min_group_n, min_group_positives)
    site_rows, site_gaps = _attribute(
        SITE_ATTRIBUTE, y, p, pred, sites, n_boot=n_boot, seed=seed, rule=rule
    )
    by_name = {e.site: e for e in evals}
    smallest, smallest_by = _smallest(evals)
    rows: list[dict[str, Any]] = []
    for r in site_rows:
        e = by_name[r.group]
        judged = {
            "auroc": rule.qualifies("auroc", r.n, r.positives) and r.auroc is not None,
            "fnr": rule.qualifies("fnr", r.n, r.positives) and r.fnr is not None,
        }
        rows.append(
            {
                **r.model_dump(),
                "site": r.group,
                "threshold": e.threshold if threshold is None else float(threshold),
                "train_patients": e.train_patients,
                "smallest": r.group == smallest,
                "judged": judged,
            }
        )
    worst: dict[str, dict[str, Any] | None] = {}
    for metric, pick in (("auroc", min), ("fnr", max)):
        candidates = [(row[metric], row["site"]) for row in rows if row["judged"][metric]]
        if not candidates:
            worst[metric] = None
            continue
        value = pick(v for v, _ in candidates)
        site = sorted(s for v, s in candidates if v == value)[0]
        worst[metric] = {"site": site, "value": value, "smallest": site == smallest}
    pooled_rows: list[dict[str, Any]] = []
    pooled_gaps: list[dict[str, Any]] = []
    for attribute in sensitive.columns:
        groups = sensitive[attribute].astype(str).to_numpy()
        subs, gaps = _attribute(attribute, y, p, pred, groups, n_boot=n_boot, seed=seed, rule=rule)
        pooled_rows.extend(s.model_dump() for s in subs)
        pooled_gaps.extend(g.model_dump() for g in gaps)
    return {
        "attribute": SITE_ATTRIBUTE,
        "rule": {"min_group_n": rule.min_size, "min_group_positives": rule.min_positives},
        "sites": rows,
        "gaps": [g.model_dump() for g in site_gaps],
        "worst": worst,
        "smallest_site": smallest,
        "smallest_by": smallest_by,
        "smallest_judged": next(
            (r["judged"] for r in rows if r["site"] == smallest), {"auroc": False, "fnr": False}
        ),
        "smallest_is_worst": any(w is not None and w["smallest"] for w in worst.values()),
        "pooled": {"n": len(y), "subgroups": pooled_rows, "gaps": pooled_gaps},
    }
