"""The whole audit as a pure function of collected facts, and its HTML page."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_factories import BUDGET, M1, Rows, model

from dpgov.ledger.chain import verify_chain
from dpgov.policy import load_policy
from dpgov.report.audit import AuditOptions, audit
from dpgov.report.dvc_index import DvcIndex
from dpgov.report.html import MAX_ROWS, render
from dpgov.report.ledger_snapshot import LedgerSnapshot
from dpgov.report.replay import Epsilons, replay
from dpgov.tracking.anchor import Anchor
from dpgov.tracking.reader.client import VIEW_ALL
from dpgov.tracking.records import ReleaseArtifacts, TrackingSnapshot
from tests.filter_reference import filter_eps

POLICY = Path(__file__).resolve().parents[3] / "policies" / "default.yaml"
NASTY = "<script>alert(1)</script>"


def world(rows: Rows, *, releases: bool = True) -> tuple[LedgerSnapshot, TrackingSnapshot]:
    r = replay(rows.rows)
    # what the ledger reports: the enforced figure, the RDP filter's under the default policy's
    # `budget.composition: adaptive` (computed independently: tests.filter_reference)
    budget = {k: filter_eps(r.block_mechanisms(*k), BUDGET["delta"]) for k in r.blocks}
    ledger = LedgerSnapshot(
        url="sqlite:///x.db",
        rows=rows.rows,
        verification=verify_chain([], None),
        hmac_key_set=False,
        budget=budget,
    )
    # the rows are not hash-chained: verification of none stands in for a verified chain
    head = rows.rows[-1]
    tracking = TrackingSnapshot(
        uri="sqlite:///m.db",
        anchors=[Anchor(seq=head.seq, hash=head.hash, time=head.time, run_id="anchor")],
    )
    if releases:
        tracking.models = [model(NASTY, {"champion": "1"})]
        tracking.artifacts[(NASTY, "1")] = ReleaseArtifacts(
            facts={
                "reservation_id": "r1",
                "private": True,
                "delta": 1e-5,
                "accountant": "pld",
                "n_train_patients": 400,
                "max_grad_norm": 1.0,
                "auroc": 0.8,
                "subgroups": [
                    {
                        "attribute": "sex",
                        "group": g,
                        "n": 100,
                        "positives": 20,
                        "auroc": a,
                        "auroc_lo": a - 0.05,
                        "auroc_hi": a + 0.05,
                        "fnr": 0.2,
                        "fnr_lo": None,
                        "fnr_hi": None,
                    }
                    for g, a in (("F", 0.78), ("M", 0.82))
                ],
                "gaps": [{"attribute": "sex", "metric": "auroc", "gap": 0.04, "groups_judged": 2}],
            }
        )
    return ledger, tracking


def build_rows() -> Rows:
    rows = Rows(load_policy().sha256)  # the packaged policy: in force, as none was ever set
    rows.block("b1")
    rows.block("b2")
    rows.reserve("r1", ["b1", "b2"])
    rows.commit("r1")
    rows.reserve("r2", ["b1"], M1.with_steps(80))
    rows.approval(NASTY, "1", "alice")
    d = rows.decision(NASTY, "1", approvers=["alice"])
    rows.promotion(NASTY, "1", d.seq)
    return rows


def test_a_clean_audit_reports_budgets_runs_and_the_release():
    ledger, tracking = world(build_rows())
    report = audit(
        ledger,
        tracking,
        DvcIndex(recorded={"abc.dir": "dvc.lock: data"}),
        load_policy(POLICY),
        AuditOptions(now=datetime(2026, 1, 1, 1, tzinfo=UTC)),
    )
    d = report.to_dict()
    assert d["ok"], d["findings"]
    assert [b["charges"] for b in d["blocks"]] == [2, 1]
    assert [r["status"] for r in d["runs"]] == ["committed", "pending"]
    (rel,) = d["releases"]
    assert rel["statement"]["epsilon"] == pytest.approx(
        Epsilons().of([M1], delta=1e-5, accountant="pld")
    )
    assert "b1 ε = " in rel["statement_text"]


def test_since_keeps_integrity_findings_only():
    rows = build_rows()
    ledger, tracking = world(rows)
    tracking.models[0].aliases["prod"] = "1"  # timeless
    report = audit(
        ledger,
        tracking,
        DvcIndex(),
        load_policy(POLICY),
        AuditOptions(
            now=datetime(2026, 1, 2, tzinfo=UTC),
            since=datetime(2026, 1, 1, 12, tzinfo=UTC),
            stale_hours=1,
        ),
    )
    # data versions unknown and the pending reservation happened before --since
    assert [f.kind for f in report.findings] == ["alias_outside_gate"]
    assert report.findings_before_since == 2
    assert report.runs == [] and all(len(b.burn_down) == 1 for b in report.blocks)


def test_the_page_is_self_contained_escaped_and_has_its_plots():
    ledger, tracking = world(build_rows())
    report = audit(
        ledger,
        tracking,
        DvcIndex(),
        load_policy(POLICY),
        AuditOptions(now=datetime(2026, 1, 1, 1, tzinfo=UTC)),
    )
    page = render(report)
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page and "<script" not in page
    assert NASTY not in page and "&lt;script&gt;" in page
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{500,}"', page)) == 3
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "data_version_unknown" in page  # DvcIndex() knows no version


def test_long_tables_are_cut_with_a_pointer_to_the_json():
    rows = Rows()
    rows.block("b1")
    for i in range(MAX_ROWS + 3):
        rows.reserve(f"r{i}", ["b1"], M1.with_steps(1))
        rows.close("release", f"r{i}")
    ledger, tracking = world(rows, releases=False)
    page = render(
        audit(
            ledger,
            tracking,
            DvcIndex(recorded={"abc.dir": "x"}),
            load_policy(POLICY),
            AuditOptions(now=datetime(2026, 1, 2, tzinfo=UTC)),
        )
    )
    assert "3 more rows in the JSON report" in page


def test_view_all_is_mlflows():
    from mlflow.entities import ViewType

    assert VIEW_ALL == ViewType.ALL
