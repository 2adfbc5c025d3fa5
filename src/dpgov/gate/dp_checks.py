"""Gate checks on a DP-evaluated release (issue 17): ``judge_on: dp_interval``.

Under ``evaluation.private: true`` the candidate's test metrics are not the numbers in its
facts: the gate recomputes them from the release recorded in ``facts.private_evaluation``
(:func:`dpgov.gate.dp_metrics.dp_metrics`, post-processing of the noisy histograms: no noise is
ever drawn here, so ``gate``, ``promote`` and ``gate --preview`` give identical figures) and
judges every floor on a lower bound and every ceiling on an upper bound:

- ``auroc``: the candidate's AUROC lower bound ≥ ``utility.min_auroc``;
- ``calibration_error``: the candidate's ECE upper bound ≤ ``utility.max_calibration_error``;
- ``auroc_drop``: the reference's AUROC upper bound minus the candidate's lower bound ≤
  ``utility.max_auroc_drop`` (both from the same release: an upper bound on the true drop);
- ``auroc_gap:A`` / ``fnr_gap:A``: the gap's upper bound ≤ the limit;
- ``*_gap_widening:A``: the candidate gap's upper bound minus the reference gap's lower bound
  ≤ the limit (an upper bound on the true widening), both over the candidate's judged
  subgroups (the models' noisy counts are independent and may judge different ones:
  :func:`_reference_lo_over`).

Every bound is computed at the η per bound of :mod:`dpgov.gate.dp_release` (which also holds
the release's own ``dp_evaluation`` and ``test_budget`` lines and the ledger facts; its names
are re-exported here). See docs/gate.md, "DP-evaluated releases".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from dpgov.gate.dp_facts import PrivateEvaluation
from dpgov.gate.dp_metrics import DPMetrics, dp_metrics, eta_per_check, gap_key, subgroup_key
from dpgov.gate.dp_release import (
    CANDIDATE,
    FRESH_TEST_DATA,
    REFERENCE,
    RELEASE_ACCOUNTANT,
    EvalBlockFacts,
    EvaluationLedgerFacts,
    EvaluationSummary,
    Line,
    evaluation_lines,
    judged_bounds,
    layout_problem,
)
from dpgov.gate.facts import CandidateFacts, Gap
from dpgov.policy.schema import Policy

Metric = Literal["auroc", "fnr"]
LABEL = {"auroc": "AUROC", "fnr": "FNR"}


@dataclass(frozen=True)
class Judged:
    """The metrics a gate judges, recomputed from the release."""

    candidate: DPMetrics
    reference: DPMetrics | None
    eta_check: float
    pe: PrivateEvaluation | None = None  # the release (for bounds over chosen subgroups)


def _recompute(policy: Policy, pe: PrivateEvaluation, bounds: int) -> Judged:
    eta_check = eta_per_check(policy.evaluation.eta, max(1, bounds), pe.attempt)
    f = policy.fairness

    def of(model: str) -> DPMetrics:
        return dp_metrics(
            pe,
            model=model,
            eta_check=eta_check,
            min_group_n=f.min_group_size,
            min_group_positives=f.min_group_positives,
        )

    ref = of(REFERENCE) if REFERENCE in pe.models and policy.release.allow_reference else None
    return Judged(candidate=of(CANDIDATE), reference=ref, eta_check=eta_check, pe=pe)


# ----------------------------------------------------------------------- the metric checks


def _missing(name: str, limit: Any, why: str) -> Line:
    return (name, None, limit, False, why, None, None)


def utility_lines(policy: Policy, judged: Judged | str) -> tuple[list[Line], Line]:
    """The ``auroc`` and ``calibration_error`` lines, and the ``auroc_drop`` line, judged on
    the release's bounds (``judged``: :func:`judge`'s answer)."""
    u = policy.utility
    if isinstance(judged, str):
        lines = [
            ("auroc", None, u.min_auroc, True, "off in policy", None, None)
            if u.min_auroc is None
            else _missing("auroc", u.min_auroc, judged),
            ("calibration_error", None, None, True, "off in policy", None, None)
            if u.max_calibration_error is None
            else _missing("calibration_error", u.max_calibration_error, judged),
        ]
        return lines, _drop_line(policy, None, judged)
    c, eta = judged.candidate, judged.eta_check
    out: list[Line] = []
    if u.min_auroc is None:
        out.append(("auroc", c.auroc, None, True, "off in policy", None, None))
    elif c.auroc_lo is None:
        out.append(_missing("auroc", u.min_auroc, "the release defines no AUROC (one class)"))
    else:
        ok = c.auroc_lo >= u.min_auroc
        out.append(
            (
                "auroc",
                c.auroc_lo,
                u.min_auroc,
                ok,
                f"DP AUROC lower bound {c.auroc_lo:.4f} (estimate {c.auroc:.4f}) "
                f"{'meets' if ok else 'below'} the floor {u.min_auroc:g}",
                c.noise_scale.get("auroc"),
                eta,
            )
        )
    if u.max_calibration_error is None:
        out.append(
            ("calibration_error", c.calibration_error, None, True, "off in policy", None, None)
        )
    elif c.calibration_error_hi is None or c.calibration_error is None:
        out.append(
            _missing("calibration_error", u.max_calibration_error, "the release defines no ECE")
        )
    else:
        limit = u.max_calibration_error
        ok = c.calibration_error_hi <= limit
        out.append(
            (
                "calibration_error",
                c.calibration_error_hi,
                limit,
                ok,
                f"DP ECE upper bound {c.calibration_error_hi:.4f} (estimate "
                f"{c.calibration_error:.4f}) {'within' if ok else 'over'} the limit {limit:g}",
                c.noise_scale.get("calibration_error"),
                eta,
            )
        )
    return out, _drop_line(policy, judged, None)


def judge(policy: Policy, facts: CandidateFacts) -> Judged | str:
    """The metrics the gate judges, recomputed from the facts' release at η per bound, or
    why there are none (the reason every DP line then gives)."""
    pe: PrivateEvaluation | None = facts.private_evaluation
    if pe is None:
        return "policy judges DP-evaluated bounds; the facts record no DP-evaluated release"
    problem = layout_problem(policy, pe)
    if problem is not None:
        return f"release not judgeable: {problem}"
    return _recompute(policy, pe, len(judged_bounds(policy, pe.models)))


def _drop_line(policy: Policy, judged: Judged | None, why: str | None) -> Line:
    limit = policy.utility.max_auroc_drop
    if limit is None:
        return ("auroc_drop", None, None, True, "off in policy", None, None)
    if not policy.release.allow_reference:
        return (
            "auroc_drop",
            None,
            None,
            True,
            "off: the policy allows no non-private reference (release.allow_reference: false)",
            None,
            None,
        )
    if judged is None:
        return _missing("auroc_drop", limit, why or "no DP-evaluated release")
    if judged.reference is None:
        return (
            "auroc_drop",
            None,
            None,
            True,
            "off: no non-private reference was evaluated in this release",
            None,
            None,
        )
    c, r = judged.candidate, judged.reference
    if c.auroc_lo is None or r.auroc_hi is None:
        return _missing("auroc_drop", limit, "the release defines no AUROC of both models")
    drop = r.auroc_hi - c.auroc_lo
    ok = drop <= limit
    scale = math.hypot(c.noise_scale.get("auroc", 0.0), r.noise_scale.get("auroc", 0.0))
    return (
        "auroc_drop",
        drop,
        limit,
        ok,
        f"reference AUROC upper bound {r.auroc_hi:.4f} minus the candidate's lower bound "
        f"{c.auroc_lo:.4f}: a drop of at most {drop:+.4f}, {'within' if ok else 'over'} "
        f"{limit:g}",
        scale,
        judged.eta_check,
    )


def _gap(m: DPMetrics, attribute: str, metric: str) -> Gap | None:
    return next((g for g in m.gaps if g.attribute == attribute and g.metric == metric), None)


def fairness_lines(policy: Policy, judged: Judged | str) -> list[Line]:
    """The ``*_gap:A`` and ``*_gap_widening:A`` lines judged on the release's bounds (the
    widening lines are turned off afterwards where the policy forbids the reference, like
    the exact-metric ones: :func:`dpgov.gate.reference.confine_reference`)."""
    f = policy.fairness
    out: list[Line] = []
    limits = {
        "auroc": (f.max_auroc_gap, f.max_auroc_gap_widening),
        "fnr": (f.max_fnr_gap, f.max_fnr_gap_widening),
    }
    for attribute in f.sensitive_attributes:
        for metric in ("auroc", "fnr"):
            max_gap, max_widening = limits[metric]
            name, wname = f"{metric}_gap:{attribute}", f"{metric}_gap_widening:{attribute}"
            if isinstance(judged, str):
                for n, lim in ((name, max_gap), (wname, max_widening)):
                    out.append(
                        (n, None, None, True, "off in policy", None, None)
                        if lim is None
                        else _missing(n, lim, judged)
                    )
                continue
            out += _gap_pair(policy, judged, attribute, metric, name, wname)
    return out


def _gap_pair(
    policy: Policy, judged: Judged, attribute: str, metric: str, name: str, wname: str
) -> list[Line]:
    f = policy.fairness
    max_gap, max_widening = (
        (f.max_auroc_gap, f.max_auroc_gap_widening)
        if metric == "auroc"
        else (f.max_fnr_gap, f.max_fnr_gap_widening)
    )
    c, eta = judged.candidate, judged.eta_check
    gap = _gap(c, attribute, metric)
    scale = c.noise_scale.get(gap_key(attribute, metric))
    if gap is None or gap.hi is None or gap.groups_judged < 2:
        count = gap.groups_judged if gap is not None else 0
        why = (
            f"only {count} subgroup(s) of {attribute!r} have >= {f.min_group_size} patients "
            f"and >= {f.min_group_positives} positives (noisy counts) with a {LABEL[metric]}"
        )
        passed = not f.require_judgeable
        suffix = "" if passed else " (policy requires a judgeable gap)"
        return [
            (n, None, None, True, "off in policy", None, None)
            if lim is None
            else (n, None, lim, passed, f"not judged: {why}{suffix}", None, eta)
            for n, lim in ((name, max_gap), (wname, max_widening))
        ]
    out: list[Line] = []
    groups = f"{gap.groups_judged} subgroups"
    if max_gap is None:
        out.append((name, gap.hi, None, True, "off in policy", scale, eta))
    else:
        ok = gap.hi <= max_gap
        out.append(
            (
                name,
                gap.hi,
                max_gap,
                ok,
                f"DP {LABEL[metric]} gap upper bound {gap.hi:.4f} (estimate {gap.gap:.4f}, "
                f"{groups}) {'within' if ok else 'over'} {max_gap:g}",
                scale,
                eta,
            )
        )
    if max_widening is None:
        out.append((wname, None, None, True, "off in policy", None, None))
        return out
    if judged.reference is None:
        out.append(
            (wname, None, max_widening, False, "no non-private reference in the release", None, eta)
        )
        return out
    ref = _gap(judged.reference, attribute, metric)
    names = list(gap.groups or [])
    if ref is not None and ref.lo is not None and sorted(ref.groups or []) == sorted(names):
        ref_lo: float | None = ref.lo
        ref_scale = judged.reference.noise_scale.get(gap_key(attribute, metric))
        over = "the same subgroups"
    else:  # the reference's noisy counts judged other subgroups: bound it over the candidate's
        ref_lo, ref_scale = _reference_lo_over(judged, attribute, metric, names)
        over = f"the candidate's subgroups ({', '.join(names)})"
    if ref_lo is None:  # not judgeable, like a gap of too few subgroups: the policy decides
        passed = not f.require_judgeable
        out.append(
            (
                wname,
                None,
                max_widening,
                passed,
                f"not judged: the reference has no {LABEL[metric]} bounds over the candidate's "
                f"subgroups of {attribute!r} ({', '.join(names)}) in the release"
                + ("" if passed else " (policy requires a judgeable gap)"),
                None,
                eta,
            )
        )
        return out
    widening = gap.hi - ref_lo
    ok = widening <= max_widening
    both = math.hypot(scale or 0.0, ref_scale or 0.0) if scale or ref_scale else None
    out.append(
        (
            wname,
            widening,
            max_widening,
            ok,
            f"gap upper bound {gap.hi:.4f} minus the reference's lower bound {ref_lo:.4f} over "
            f"{over}: widened by at most {widening:+.4f}, {'within' if ok else 'over'} "
            f"{max_widening:g}",
            both,
            eta,
        )
    )
    return out


def _reference_lo_over(
    judged: Judged, attribute: str, metric: str, groups: list[str]
) -> tuple[float | None, float | None]:
    """A lower bound at ``eta_check`` on the reference's gap over ``groups`` (the candidate's
    judged subgroups), and its noise scale: the two models' noisy counts are independent
    draws, so the subgroups each judges can differ while the widening compares gaps over the
    same subgroups. The gap over k subgroups is at least ``max lo − min hi`` whenever all 2k
    one-sided subgroup bounds hold; each is taken at ``eta_check / (2k)`` (Bonferroni), so the
    bound fails with probability at most ``eta_check``. (When both models judged the same
    subgroups, :func:`~dpgov.gate.dp_metrics.dp_metrics`'s own pairwise bound is used.)"""
    k = len(groups)
    if judged.pe is None or k < 2:
        return None, None
    m = dp_metrics(
        judged.pe,
        model=REFERENCE,
        eta_check=judged.eta_check / (2 * k),
        min_group_n=0,
        min_group_positives=0,
    )
    rows = {g.group: g for g in m.subgroups if g.attribute == attribute}
    los, his, points = [], [], {}
    for name in groups:
        row = rows.get(name)
        if row is None:
            return None, None
        value, lo, hi = (
            (row.auroc, row.auroc_lo, row.auroc_hi)
            if metric == "auroc"
            else (row.fnr, row.fnr_lo, row.fnr_hi)
        )
        if value is None or lo is None or hi is None:
            return None, None
        los.append(lo)
        his.append(hi)
        points[name] = value
    top, bottom = max(points, key=points.__getitem__), min(points, key=points.__getitem__)
    scales = [m.noise_scale.get(subgroup_key(attribute, g, metric), 0.0) for g in (top, bottom)]
    return max(0.0, max(los) - min(his)), math.hypot(*scales)


__all__ = [
    "CANDIDATE",
    "FRESH_TEST_DATA",
    "REFERENCE",
    "RELEASE_ACCOUNTANT",
    "EvalBlockFacts",
    "EvaluationLedgerFacts",
    "EvaluationSummary",
    "Judged",
    "Line",
    "evaluation_lines",
    "fairness_lines",
    "judge",
    "judged_bounds",
    "utility_lines",
]
