"""The privacy statement in the audit report shows the empirical audit beside the claimed ε:
the newest recorded ``empirical_audit`` of the released version, or that none is recorded
(issue 18)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from audit_factories import Rows
from test_report import NASTY, world

from dpgov.gate.empirical import AUDIT_KIND, empirical_text, latest_audits
from dpgov.policy import load_policy
from dpgov.report.audit import AuditOptions, audit
from dpgov.report.dvc_index import DvcIndex

NOW = AuditOptions(now=datetime(2026, 1, 1, 1, tzinfo=UTC))


def _payload(lower: float, claimed: float = 2.0) -> dict[str, Any]:
    return {
        "model": NASTY,
        "version": "1",
        "epsilon_lower_bound": lower,
        "epsilon_claimed": claimed,
        "ceiling": 4.678,
        "canaries": 1000,
        "guesses": 200,
        "correct": 130,
        "delta": 1e-5,
        "confidence": 0.95,
        "threat_model": "white-box",
    }


def _report(*audits: dict[str, Any]) -> dict[str, Any]:
    rows = Rows(load_policy().sha256)
    rows.block("b1")
    rows.reserve("r1", ["b1"])
    rows.commit("r1")
    for p in audits:
        rows.add(AUDIT_KIND, p)
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
    return audit(ledger, tracking, DvcIndex(), load_policy(), NOW).to_dict()


def _release(*audits: dict[str, Any]) -> dict[str, Any]:
    (rel,) = _report(*audits)["releases"]
    return rel


def test_the_statement_shows_the_newest_audit_beside_the_claim() -> None:
    rel = _release(_payload(0.9), _payload(0.412))
    text = rel["statement_text"]
    assert "lower bound ε ≥ 0.412 at 95% confidence beside the claimed ε 2.000" in text
    assert "no violation shown" in text and "4.678" in text
    assert rel["statement"]["empirical"]["epsilon_lower_bound"] == 0.412


def test_the_statement_says_when_no_audit_is_recorded() -> None:
    rel = _release()
    assert "Empirical audit: none recorded" in rel["statement_text"]
    assert rel["statement"]["empirical"] is None


def test_a_violation_is_stated_as_such_and_is_a_finding() -> None:
    assert "VIOLATED" in empirical_text({**_payload(2.5), "seq": 9})
    report = _report(_payload(2.5))
    found = [f for f in report["findings"] if f["kind"] == "release_empirical_violation"]
    assert len(found) == 1 and "ε ≥ 2.500" in found[0]["detail"] and not report["ok"]
    (rel,) = report["releases"]
    assert "VIOLATED" in rel["statement_text"]
    # an audit within the claim is no finding
    clean = _report(_payload(0.4))
    assert "release_empirical_violation" not in {f["kind"] for f in clean["findings"]}


def test_unreadable_entries_are_skipped() -> None:
    class E:
        def __init__(self, seq: int, kind: str, payload: Any) -> None:
            self.seq, self.kind, self.payload = seq, kind, payload

    found = latest_audits(
        [E(1, AUDIT_KIND, None), E(2, AUDIT_KIND, {"model": "x"}), E(3, AUDIT_KIND, _payload(1))]
    )
    assert list(found) == [(NASTY, "1")] and found[(NASTY, "1")].seq == 3
