"""The one subgroup rule: which subgroups a fairness gap is judged over.

Used by training's evaluation (the run summary's gaps and the non-private reference's), by the
gate (:func:`dpgov.gate.decision.judged_gap`) and by the widening check, so that both sides of
a comparison are gaps over the *same* subgroups. A subgroup of one sensitive attribute is
judged for a metric when, on the test split, it holds at least ``min_size`` patients and at
least ``min_positives`` positive patients, and the metric is defined there: AUROC needs both
classes, the false-negative rate a positive. The thresholds are the policy's
(``fairness.min_group_size``, ``fairness.min_group_positives``). Qualification depends only on
the test split's counts, so the candidate and the reference of one run (same test split, same
rule) judge the same subgroups; gaps record the rule and the subgroups they were computed over
(:class:`dpgov.gate.facts.Gap` ``min_group_n``, ``min_group_positives``, ``groups``), and a gap
recorded under another rule or over other subgroups is not compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from dpgov.gate.facts import CandidateFacts, Gap, SubgroupMetric
    from dpgov.policy.schema import Fairness

Metric = Literal["auroc", "fnr"]


@dataclass(frozen=True)
class GroupRule:
    min_size: int
    min_positives: int = 0

    def qualifies(self, metric: str, n: int, positives: int) -> bool:
        """Whether a subgroup of ``n`` test patients, ``positives`` of them positive, is
        judged for ``metric``."""
        if n < self.min_size or positives < self.min_positives:
            return False
        if metric == "auroc":
            return 0 < positives < n
        return positives > 0

    def describe(self) -> str:
        return f">= {self.min_size} patients and >= {self.min_positives} positives"


def rule_of(fairness: Fairness) -> GroupRule:
    """The policy's subgroup rule."""
    return GroupRule(fairness.min_group_size, fairness.min_group_positives)


def same_rule(gap: Gap, rule: GroupRule) -> bool:
    """Whether ``gap`` was computed under ``rule``. A gap recorded before the positives
    threshold was (``min_group_positives`` None) matches on size; its subgroups are then
    compared by count (:func:`comparable`, :func:`judged_gap`)."""
    return gap.min_group_n == rule.min_size and gap.min_group_positives in (
        None,
        rule.min_positives,
    )


def comparable(gap: Gap, groups: list[str], rule: GroupRule) -> str | None:
    """None when ``gap`` (the reference's) is over the subgroups ``groups`` under ``rule``;
    otherwise why the two cannot be compared."""
    if not same_rule(gap, rule):
        return (
            f"the reference's gap was judged over groups of >= {gap.min_group_n} patients and "
            f">= {gap.min_group_positives or 0} positives, the candidate's {rule.describe()}"
        )
    if gap.groups is not None and sorted(gap.groups) != sorted(groups):
        return (
            f"the reference's gap is over subgroups {', '.join(sorted(gap.groups))}, the "
            f"candidate's over {', '.join(sorted(groups))}"
        )
    if gap.groups_judged != len(groups):
        return (
            f"the reference's gap is over {gap.groups_judged} subgroups, the candidate's over "
            f"{len(groups)}"
        )
    return None


@dataclass(frozen=True)
class JudgedGap:
    """A gap as the gate judges it (see the module docstring for how it is obtained)."""

    attribute: str
    metric: Literal["auroc", "fnr"]
    groups: int  # subgroups that qualify
    gap: float | None  # None when fewer than two subgroups qualify
    lo: float | None
    hi: float | None
    source: str  # "recorded" | "recomputed"
    names: tuple[str, ...] = ()  # the subgroups judged (dpgov.gate.subgroups)


def _metric(g: SubgroupMetric, metric: str) -> tuple[float | None, float | None, float | None]:
    if metric == "auroc":
        return g.auroc, g.auroc_lo, g.auroc_hi
    return g.fnr, g.fnr_lo, g.fnr_hi


def judged_gap(
    facts: CandidateFacts, attribute: str, metric: Literal["auroc", "fnr"], fairness: Fairness
) -> JudgedGap:
    """The gap of ``metric`` over ``attribute``'s subgroups judged by the policy's subgroup
    rule (:mod:`dpgov.gate.subgroups`, the one training's evaluation applies)."""
    rule = rule_of(fairness)
    qualifying = [
        g
        for g in facts.subgroups
        if g.attribute == attribute
        and rule.qualifies(metric, g.n, g.positives)
        and _metric(g, metric)[0] is not None
    ]
    names = tuple(g.group for g in qualifying)
    if len(qualifying) < 2:
        return JudgedGap(attribute, metric, len(qualifying), None, None, None, "recomputed", names)
    recorded: Gap | None = next(
        (
            gap
            for gap in facts.gaps
            if gap.attribute == attribute
            and gap.metric == metric
            and same_rule(gap, rule)
            and gap.groups_judged == len(qualifying)
            and (gap.groups is None or sorted(gap.groups) == sorted(g.group for g in qualifying))
        ),
        None,
    )
    if recorded is not None:
        return JudgedGap(
            attribute,
            metric,
            len(qualifying),
            recorded.gap,
            recorded.lo,
            recorded.hi,
            "recorded",
            names,
        )
    values = [_metric(g, metric) for g in qualifying]
    points = [v[0] for v in values if v[0] is not None]
    gap = max(points) - min(points)
    los = [v[1] for v in values]
    his = [v[2] for v in values]
    lo = hi = None
    if all(x is not None for x in los) and all(x is not None for x in his):
        lo_f = [float(x) for x in los if x is not None]
        hi_f = [float(x) for x in his if x is not None]
        hi = max(hi_f) - min(lo_f)
        lo = max(0.0, max(lo_f) - min(hi_f))
    return JudgedGap(attribute, metric, len(qualifying), gap, lo, hi, "recomputed", names)


def reference_gap(
    facts: CandidateFacts, attribute: str, metric: str, fairness: Fairness
) -> Gap | None:
    """The reference's gap of ``metric`` over ``attribute``: the one under the policy's rule,
    else another (which the widening check then reports it cannot compare)."""
    if facts.reference is None:
        return None
    matches = [g for g in facts.reference.gaps if g.attribute == attribute and g.metric == metric]
    same = [g for g in matches if same_rule(g, rule_of(fairness))]
    found = same or matches  # another rule's gap: the widening check says it cannot compare
    return found[0] if found else None
