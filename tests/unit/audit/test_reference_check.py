"""The audit lists releases whose gate used the non-private reference (issue 16); their
privacy statements say so, and say where the noise came from."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit_factories import Rows, model
from test_report import world

from dpgov.policy import load_policy
from dpgov.report.audit import AuditOptions, audit
from dpgov.report.checks.reference import check_reference, reference_releases
from dpgov.report.checks.releases import check_releases, gov_entries
from dpgov.report.dvc_index import DvcIndex
from dpgov.report.html import render

REPO = Path(__file__).resolve().parents[3]
DEFAULT = load_policy(REPO / "policies" / "default.yaml")
STRICT = load_policy(REPO / "policies" / "strict.yaml")
NAME = "<script>alert(1)</script>"  # the model name test_report.world releases


def _line(name: str, observed: Any, reason: str = "") -> dict[str, Any]:
    return {"name": name, "observed": observed, "limit": 0.05, "passed": True, "reason": reason}


def rows_with_decision(widening_observed: Any, *, reason: str = "") -> Rows:
    rows = Rows(load_policy().sha256)
    rows.block("b1")
    rows.block("b2")
    rows.reserve("r1", ["b1", "b2"])
    rows.commit("r1")
    rows.approval(NAME, "1", "alice")
    d = rows.add(
        "gate_decision",
        {
            "model": NAME,
            "version": "1",
            "allowed": True,
            "failing": [],
            "approvers": ["alice"],
            "policy_sha256": rows.policy_sha256,
            "policy_path": "policy.yaml",
            "checks": [
                _line("auroc_gap:sex", 0.04),
                _line("auroc_gap_widening:sex", widening_observed, reason),
                {"name": "approvals", "observed": 1, "limit": 1, "passed": True, "reason": ""},
            ],
        },
    )
    rows.promotion(NAME, "1", d.seq)
    return rows


def _releases(rows: Rows) -> Any:
    _, releases = check_releases(gov_entries(rows.rows), [model(NAME, {"champion": "1"})], DEFAULT)
    return releases


def test_a_release_judged_against_the_reference_is_listed() -> None:
    rows = rows_with_decision(0.01)
    listed = reference_releases(rows.rows, _releases(rows), {})
    assert [(x.model, x.version, x.alias) for x in listed] == [(NAME, "1", "champion")]
    assert listed[0].decision_seq == 6
    assert check_reference(listed, DEFAULT) == []  # the default policy allows the reference


def test_a_release_whose_widening_was_off_is_not_listed() -> None:
    rows = rows_with_decision(None, reason="off: release.allow_reference is false")
    assert reference_releases(rows.rows, _releases(rows), {}) == []


def test_under_a_policy_forbidding_the_reference_it_is_a_finding() -> None:
    rows = rows_with_decision(0.01)
    found = check_reference(reference_releases(rows.rows, _releases(rows), {}), STRICT)
    assert [f.kind for f in found] == ["release_used_reference"]
    assert "allow_reference: false" in found[0].detail


def test_the_audit_lists_it_and_the_statement_says_so() -> None:
    rows = rows_with_decision(0.01)
    ledger, tracking = world(rows)
    facts = tracking.artifacts[(NAME, "1")].facts
    assert facts is not None
    facts.update(reference={"run_id": "ref-run-7", "auroc": 0.85, "gaps": []})
    facts.update(noise_source="os_entropy")
    report = audit(
        ledger,
        tracking,
        DvcIndex(recorded={"abc.dir": "dvc.lock: data"}),
        DEFAULT,
        AuditOptions(now=datetime(2026, 1, 1, 1, tzinfo=UTC)),
    )
    d = report.to_dict()
    assert [x["reference_run"] for x in d["reference_releases"]] == ["ref-run-7"]
    (rel,) = d["releases"]
    text = rel["statement_text"]
    assert "Non-private reference:" in text and "ref-run-7" in text
    assert "WITHOUT differential privacy" in text
    assert "operating-system entropy" in text
    assert "release_used_reference" not in {f["kind"] for f in d["findings"]}
    assert "depended on a non-private reference" in render(report)


def test_a_release_with_reproducible_noise_says_so() -> None:
    rows = rows_with_decision(None)
    ledger, tracking = world(rows)
    facts = tracking.artifacts[(NAME, "1")].facts
    assert facts is not None
    facts.update(noise_source="seed")
    report = audit(
        ledger, tracking, DvcIndex(), DEFAULT, AuditOptions(now=datetime(2026, 1, 1, 1, tzinfo=UTC))
    )
    (rel,) = report.to_dict()["releases"]
    assert "REPRODUCIBLE (derived from train.seed)" in rel["statement_text"]
    assert "Non-private reference" not in rel["statement_text"]
    assert report.reference_releases == []


def test_a_release_approved_by_its_own_author_says_so() -> None:
    """A single-user policy (approvals.allow_author) ships on the author's own approval: the
    release's statement says no second person reviewed it; another approver's does not."""
    for author, said in (("alice", True), ("bob", False)):
        rows = rows_with_decision(None)  # approved by alice
        ledger, tracking = world(rows)
        facts = tracking.artifacts[(NAME, "1")].facts
        assert facts is not None
        facts.update(author=author)
        report = audit(
            ledger,
            tracking,
            DvcIndex(),
            DEFAULT,
            AuditOptions(now=datetime(2026, 1, 1, 1, tzinfo=UTC)),
        )
        (rel,) = report.to_dict()["releases"]
        assert ("Approved by the run's own author (alice)" in rel["statement_text"]) is said
