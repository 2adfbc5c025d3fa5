"""The audit report's statement of a released version whose run attacked its models
(``train.membership_attack``): the attack is listed as not covered and its figures are
stated; a release without one says neither."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from audit_factories import Rows
from test_report import NASTY, world

from dpgov.contracts import MEMBERSHIP_NOT_COVERED
from dpgov.policy import load_policy
from dpgov.report.audit import AuditOptions, audit
from dpgov.report.dvc_index import DvcIndex

NOW = AuditOptions(now=datetime(2026, 1, 1, 1, tzinfo=UTC))


def _row(model: str, attribute: str, group: str, tpr: float, fpr: float) -> dict[str, Any]:
    return {
        "model": model,
        "attribute": attribute,
        "group": group,
        "members": 300,
        "nonmembers": 100,
        "auc": 0.55,
        "fpr": fpr,
        "tpr": tpr,
        "tpr_lo": tpr - 0.01,
        "tpr_hi": tpr + 0.01,
    }


ATTACK = {
    "attack": "loss-threshold",
    "nonmember_split": "validation",
    "min_false_positives": 10,
    "confidence": 0.95,
    "rows": [
        _row("dp", "all", "all", 0.02, 0.01),
        _row("dp", "sex", "F", 0.15, 0.10),
        _row("dp", "sex", "M", 0.30, 0.10),  # the most exposed: TPR - FPR 0.20
        _row("reference", "all", "all", 0.05, 0.01),
    ],
}


def _release(membership: dict[str, Any] | None) -> dict[str, Any]:
    rows = Rows(load_policy().sha256)
    rows.block("b1")
    rows.reserve("r1", ["b1"])
    rows.commit("r1")
    rows.approval(NASTY, "1", "alice")
    d = rows.add(
        "gate_decision",
        {
            "model": NASTY,
            "version": "1",
            "allowed": True,
            "failing": [],
            "approvers": ["alice"],
            "policy_sha256": rows.policy_sha256,
            "policy_path": "policy.yaml",
            "checks": [
                {"name": "approvals", "observed": 1, "limit": 1, "passed": True, "reason": ""}
            ],
        },
    )
    rows.promotion(NASTY, "1", d.seq)
    ledger, tracking = world(rows)
    if membership is not None:
        art = tracking.artifacts[(NASTY, "1")]
        assert art.facts is not None
        art.facts["membership_attack"] = membership
    (rel,) = audit(ledger, tracking, DvcIndex(), load_policy(), NOW).to_dict()["releases"]
    return rel


def test_a_release_whose_run_attacked_its_models_says_so_and_states_the_figures() -> None:
    rel = _release(ATTACK)
    assert MEMBERSHIP_NOT_COVERED in rel["statement"]["not_covered"]
    text = rel["statement_text"]
    assert "Membership inference (loss-threshold attack, NON-PRIVATE figures" in text
    assert "DP model AUC 0.550, TPR 0.020 [0.010, 0.030] at FPR 0.010" in text
    assert "non-private reference AUC 0.550, TPR 0.050" in text
    assert "most exposed judged subgroup: sex=M (300 members, 100 non-members" in text


def test_a_release_without_an_attack_says_neither() -> None:
    rel = _release(None)
    assert MEMBERSHIP_NOT_COVERED not in rel["statement"]["not_covered"]
    assert "Membership inference" not in rel["statement_text"]
