"""The membership-inference loss attack (dpgov.training.membership_attack): Clopper–Pearson
intervals against the exact binomial, the operating point's threshold, one row per judged
subgroup, and a clear AUC above 0.5 against a deliberately overfit non-private model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, binom

from dpgov.errors import UsageError
from dpgov.training.membership_attack import (
    OVERALL,
    attack_row,
    attack_table,
    auc,
    clopper_pearson,
    lira_offline_scores,
    logit_confidence,
    loss_scores,
)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), data=st.data(), conf=st.sampled_from([0.9, 0.95, 0.99]))
def test_clopper_pearson_is_the_exact_binomial_interval(
    n: int, data: st.DataObject, conf: float
) -> None:
    k = data.draw(st.integers(0, n))
    lo, hi = clopper_pearson(k, n, conf)
    a = (1 - conf) / 2
    # the defining equations: P(X >= k | lo) = a and P(X <= k | hi) = a (closed at 0 and n)
    if k == 0:
        assert lo == 0.0
    else:
        assert binom.sf(k - 1, n, lo) == pytest.approx(a, rel=1e-6, abs=1e-12)
        assert lo == pytest.approx(beta.ppf(a, k, n - k + 1), rel=1e-9, abs=1e-12)
    if k == n:
        assert hi == 1.0
    else:
        assert binom.cdf(k, n, hi) == pytest.approx(a, rel=1e-6, abs=1e-12)
        assert hi == pytest.approx(beta.ppf(1 - a, k + 1, n - k), rel=1e-9, abs=1e-12)
    assert lo <= k / n <= hi


def test_clopper_pearson_covers_at_least_its_confidence() -> None:
    n, q, conf = 60, 0.2, 0.95
    covered = sum(
        binom.pmf(k, n, q)
        for k in range(n + 1)
        if (lambda c: c[0] <= q <= c[1])(clopper_pearson(k, n, conf))
    )
    assert covered >= conf


def test_clopper_pearson_refuses_impossible_counts() -> None:
    with pytest.raises(UsageError, match="k=5, n=3"):
        clopper_pearson(5, 3)


def test_the_operating_point_lets_exactly_k_nonmembers_through() -> None:
    nonmembers = np.arange(100, dtype=float)  # the 10 highest: 90..99; threshold 89
    members = np.array([95.0, 89.5, 89.0, 50.0])  # 2 strictly above 89
    row = attack_row("all", "all", members, nonmembers, min_false_positives=10)
    assert (row.false_positives, row.fpr) == (10, 0.10)
    assert (row.true_positives, row.tpr) == (2, 0.5)
    assert (row.tpr_lo, row.tpr_hi) == clopper_pearson(2, 4)
    with pytest.raises(UsageError, match="11 non-members"):
        attack_row("sex", "F", members, nonmembers[:10], min_false_positives=10)


def test_auc_is_the_pairwise_probability() -> None:
    m, n = np.array([3.0, 1.0]), np.array([2.0, 0.0, 1.0])
    pairs = [(a > b) + 0.5 * (a == b) for a in m for b in n]
    assert auc(m, n) == pytest.approx(np.mean(pairs))


def test_the_table_has_the_overall_row_then_one_row_per_judged_subgroup() -> None:
    rng = np.random.default_rng(0)
    mg = pd.DataFrame({"sex": ["F"] * 60 + ["M"] * 40, "age": ["old"] * 95 + ["young"] * 5})
    ng = pd.DataFrame({"sex": ["F"] * 50 + ["M"] * 10, "age": ["old"] * 30 + ["young"] * 30})
    rows = attack_table(rng.normal(size=100), rng.normal(size=60), mg, ng, min_group_n=20)
    # M: 10 non-members < 20; young: 5 members < 20; attributes in the frames' column order
    got = [(r.attribute, r.group, r.members, r.nonmembers) for r in rows]
    assert got == [(OVERALL, OVERALL, 100, 60), ("sex", "F", 60, 50), ("age", "old", 95, 30)]


def test_loss_attack_on_an_overfit_nonprivate_model_is_clearly_above_chance() -> None:
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    d, n = 40, 300
    x = rng.normal(size=(2 * n, d)).astype(np.float32)
    y = (rng.random(2 * n) < 0.5).astype(np.float32)  # labels independent of x: only memory helps
    model = torch.nn.Sequential(torch.nn.Linear(d, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:n]), torch.from_numpy(y[:n])
    for _ in range(300):  # full batch, no regularisation: memorises the members' labels
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(xt).reshape(-1), yt).backward()
        opt.step()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).reshape(-1).numpy()
    scores = loss_scores(logits, y)
    groups = pd.DataFrame({"sex": np.where(rng.random(2 * n) < 0.5, "F", "M")})
    rows = attack_table(
        scores[:n], scores[n:], groups[:n], groups[n:].reset_index(drop=True), min_group_n=30
    )
    overall = rows[0]
    assert overall.auc > 0.8
    # at 10 false positives the loss attack is weak (Carlini et al. 2022): above the FPR,
    # with the exact interval of its own counts
    assert overall.false_positives == 10 and overall.tpr > overall.fpr
    assert (overall.tpr_lo, overall.tpr_hi) == clopper_pearson(overall.true_positives, n)
    assert {r.group for r in rows[1:]} == {"F", "M"}
    assert all(r.auc > 0.7 for r in rows)


def test_lira_offline_ranks_targets_against_their_out_shadows() -> None:
    rng = np.random.default_rng(1)
    k, n = 8, 200
    shadow = rng.normal(0.0, 1.0, size=(k, n))
    out = np.ones((k, n), dtype=bool)
    member = rng.random(n) < 0.5
    target = rng.normal(np.where(member, 2.0, 0.0), 1.0)
    s = lira_offline_scores(target, shadow, out)
    assert auc(s[member], s[~member]) > 0.8
    with pytest.raises(UsageError, match="two OUT shadows"):
        lira_offline_scores(target, shadow[:1], out[:1])


def test_logit_confidence_is_the_logit_of_the_true_label_probability() -> None:
    z, y = np.array([np.log(9), np.log(9)]), np.array([1, 0])  # p(label 1) = 0.9
    assert logit_confidence(z, y) == pytest.approx([np.log(9), -np.log(9)])


def test_losses_from_logits_are_the_cross_entropy_without_saturation() -> None:
    z, y = np.array([0.0, 2.0, 40.0, 40.0]), np.array([1, 0, 1, 0])
    p = 1 / (1 + np.exp(-z[:2]))  # where float64 probabilities still hold the loss
    expected = -(y[:2] * np.log(p) + (1 - y[:2]) * np.log(1 - p))
    assert -loss_scores(z[:2], y[:2]) == pytest.approx(expected)
    assert -loss_scores(z[2:3], y[2:3]) == pytest.approx([np.exp(-40.0)], rel=1e-9)
    assert -loss_scores(z[3:], y[3:]) == pytest.approx([40.0])  # log(1 + e^40), no overflow
    assert loss_scores(np.array([30.0]), [1])[0] > loss_scores(np.array([20.0]), [1])[0]


def test_the_facts_record_every_row_and_the_report_names_the_most_exposed_subgroup() -> None:
    from dpgov.gate.facts import MembershipFacts
    from dpgov.report.checks.membership_risk import membership_text
    from dpgov.training.membership_attack import MembershipRisk, ModelAttack

    rng = np.random.default_rng(3)
    mg = pd.DataFrame({"sex": rng.choice(["F", "M"], 200)})
    ng = pd.DataFrame({"sex": rng.choice(["F", "M"], 120)})
    models = []
    for name, shift in (("dp", 0.0), ("reference", 1.0)):
        members = rng.normal(np.where(mg["sex"] == "M", shift, 0.0), 1.0)
        rows = attack_table(members, rng.normal(size=120), mg, ng, min_group_n=20)
        models.append(ModelAttack(model=name, rows=tuple(rows)))
    risk = MembershipRisk("loss-threshold", "validation", 200, 120, 10, 0.95, 0.0, tuple(models))
    facts = MembershipFacts.model_validate(risk.facts())  # the candidate facts' contract
    assert len(facts.rows) == sum(len(m.rows) for m in models) == 6
    text = membership_text(risk.facts())
    dp = models[0].rows
    assert text.startswith("\nMembership inference (loss-threshold attack, NON-PRIVATE")
    assert f"DP model AUC {dp[0].auc:.3f}" in text
    assert f"non-private reference AUC {models[1].rows[0].auc:.3f}" in text
    worst = max(dp[1:], key=lambda r: r.tpr - r.fpr)
    assert f"most exposed judged subgroup: sex={worst.group} ({worst.members} members" in text
    assert membership_text(None) == ""


def _arrays(ids: list[str], sex: list[str]) -> Any:
    from dpgov.training.inputs import Arrays

    n = len(ids)
    return Arrays(
        x=np.zeros((n, 2), dtype=np.float32),
        y=np.ones(n, dtype=np.float32),
        patient_id=np.asarray(ids),
        block=np.asarray(["b"] * n),
        sensitive=pd.DataFrame({"sex": sex}),
    )


def test_a_patient_with_several_records_scores_once_their_mean() -> None:
    from dpgov.training.membership_attack import per_patient

    data = _arrays(["b", "a", "b", "c"], ["M", "F", "M", "F"])
    scores, groups = per_patient(np.array([1.0, 5.0, 3.0, 7.0]), data)
    assert scores.tolist() == [5.0, 2.0, 7.0]  # patients a, b, c
    assert groups["sex"].tolist() == ["F", "M", "F"]
    one = _arrays(["x", "y"], ["F", "M"])
    s, g = per_patient(np.array([1.0, 2.0]), one)
    assert s.tolist() == [1.0, 2.0] and g is one.sensitive


def test_too_few_non_members_skips_the_attack_rather_than_failing_a_charged_run() -> None:
    from types import SimpleNamespace

    from dpgov.training.membership_attack import attack_run

    few = _arrays([str(i) for i in range(5)], ["F"] * 5)
    p = SimpleNamespace(validation=few, test=few, train=few)
    assert attack_run(p, SimpleNamespace(result=None), SimpleNamespace()) is None
