"""One subgroup rule (dpgov.gate.subgroups) for the run's evaluation, the gate and the
reference: the gaps training records are the gaps the gate judges (same subgroups, recorded,
not recomputed), and a widening check never compares gaps over unlike subgroups."""

from __future__ import annotations

import numpy as np
import pandas as pd
from gate_factories import APPROVED, facts, ledger_facts, policy

from dpgov.gate.decision import Check
from dpgov.gate.decision import evaluate as decide
from dpgov.gate.facts import Gap, ReferenceFacts
from dpgov.gate.subgroups import GroupRule, judged_gap, rule_of
from dpgov.training.evaluate import evaluate, reference_facts


def check(name: str, f: object) -> Check:
    return decide(policy(), f, ledger_facts(), APPROVED, policy_sha256="a" * 64).check(name)  # type: ignore[arg-type]


def _cohort(seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Four age bands; the youngest has 200 patients but only 5 positives (the case of the
    demo's '<60' band: judged by size, not by positives)."""
    rng = np.random.default_rng(seed)
    bands, ys = [], []
    for band, n, pos in (("<60", 200, 5), ("60-69", 200, 30), ("70-79", 150, 40), ("80+", 100, 50)):
        bands += [band] * n
        ys += [1] * pos + [0] * (n - pos)
    y = np.array(ys)
    scores = np.clip(0.3 * y + rng.uniform(0, 0.7, y.size), 0, 1)
    return y, scores, pd.DataFrame({"age_band": bands})


def test_rule_qualifies_by_size_positives_and_defined_metric() -> None:
    rule = GroupRule(30, 10)
    assert rule.qualifies("fnr", 30, 10) and rule.qualifies("auroc", 30, 10)
    assert not rule.qualifies("fnr", 29, 10) and not rule.qualifies("fnr", 200, 9)
    assert not rule.qualifies("auroc", 40, 40)  # one class: no AUROC
    assert GroupRule(30).qualifies("fnr", 30, 1) and not GroupRule(30).qualifies("fnr", 30, 0)


def test_the_run_records_the_gap_the_gate_judges_over_the_same_subgroups() -> None:
    y, p, sens = _cohort()
    pol = policy(fairness={"sensitive_attributes": ["age_band"]})
    rule = rule_of(pol.fairness)
    ev = evaluate(
        y, p, sens, n_boot=20, min_group_n=rule.min_size, min_group_positives=rule.min_positives
    )
    fnr = next(g for g in ev.gaps if g.metric == "fnr")
    assert fnr.groups == ["60-69", "70-79", "80+"] and fnr.groups_judged == 3  # not '<60'
    assert (fnr.min_group_n, fnr.min_group_positives) == (30, 10)
    f = facts(subgroups=ev.subgroups, gaps=ev.gaps, reference=reference_facts("ref", ev))
    jg = judged_gap(f, "age_band", "fnr", pol.fairness)
    assert jg.source == "recorded" and jg.gap == fnr.gap and list(jg.names) == fnr.groups
    d = decide(pol, f, ledger_facts(), APPROVED, policy_sha256="a" * 64)
    widening = d.check("fnr_gap_widening:age_band")
    assert widening.passed and widening.observed == 0.0  # the same gap on both sides


def test_widening_against_a_reference_over_other_subgroups_cannot_compare() -> None:
    other = Gap(
        attribute="age_band",
        metric="fnr",
        gap=0.9,
        groups_judged=3,
        min_group_n=30,
        min_group_positives=10,
        groups=["<60", "60-69", "80+"],
    )
    f = facts(reference=ReferenceFacts(run_id="r", auroc=0.85, gaps=[other]))
    c = check("fnr_gap_widening:age_band", f=f)
    assert not c.passed and c.observed is None
    assert c.reason.startswith("cannot compare: the reference's gap is over subgroups")
    counted = other.model_copy(update={"groups": None, "groups_judged": 4})
    c = check(
        "fnr_gap_widening:age_band",
        f=facts(reference=ReferenceFacts(run_id="r", auroc=0.85, gaps=[counted])),
    )
    assert not c.passed and "over 4 subgroups, the candidate's over 3" in c.reason
    size = other.model_copy(update={"min_group_n": 50, "groups": None})
    c = check(
        "fnr_gap_widening:age_band",
        f=facts(reference=ReferenceFacts(run_id="r", auroc=0.85, gaps=[size])),
    )
    assert not c.passed and ">= 50 patients" in c.reason
