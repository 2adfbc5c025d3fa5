"""The audit lists DP-evaluated releases with their cost from the ledger, flags a release whose
facts have no DP-evaluated release under a private gate, and the statement says which it is
(issue 17)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from audit_factories import Rows
from test_report import NASTY, world

from dpgov.accounting import DpSgdMechanism
from dpgov.policy import load_policy
from dpgov.report.audit import AuditOptions, audit
from dpgov.report.dvc_index import DvcIndex
from dpgov.report.html import render
from dpgov.report.replay import Epsilons
from dpgov.report.statement import DP_TEST_METRICS, EXACT_TEST_METRICS
from dpgov.training.dp_evaluation import evaluation_mechanism, release

NOW = AuditOptions(now=datetime(2026, 1, 1, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def pe():
    rng = np.random.default_rng(5)
    n = 400
    y = (rng.random(n) < 0.3).astype(int)
    scores = {"candidate": np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)}
    sensitive = pd.DataFrame({"sex": rng.choice(["F", "M"], size=n)})
    return release(
        y,
        scores,
        sensitive,
        threshold=0.4,
        epsilon=0.5,
        delta=1e-5,
        bins=10,
        attempt=2,
        test_blocks=["test-b1"],
        reservation_id="e1",
        generator=np.random.default_rng(1),
    ).model_copy(update={"noise_source": "os_entropy"})


def _rows(mech: DpSgdMechanism | None, *, private_gate: bool = True) -> Rows:
    rows = Rows(load_policy().sha256)
    rows.block("b1")
    rows.block("test-b1")
    rows.reserve("r1", ["b1"])
    rows.commit("r1")
    if mech is not None:
        rows.reserve("e1", ["test-b1"], mech)
        rows.commit("e1", mech)
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
            "evaluation": {"private": True, "recorded": True} if private_gate else None,
            "checks": [
                {"name": "approvals", "observed": 1, "limit": 1, "passed": True, "reason": ""}
            ],
        },
    )
    rows.promotion(NASTY, "1", d.seq)
    return rows


def _audit(rows: Rows, facts: dict[str, Any]) -> dict[str, Any]:
    ledger, tracking = world(rows)
    art = tracking.artifacts[(NASTY, "1")]
    assert art.facts is not None
    art.facts.update(facts)
    report = audit(ledger, tracking, DvcIndex(), load_policy(), NOW)
    return {**report.to_dict(), "html": render(report)}


def test_a_dp_evaluated_release_is_listed_with_its_ledger_cost(pe):
    mech = evaluation_mechanism(pe)
    d = _audit(_rows(mech), {"private_evaluation": pe.model_dump(mode="json")})
    (listed,) = d["evaluated_releases"]
    assert listed["test_blocks"] == ["test-b1"] and listed["attempt"] == 2
    assert listed["charge"] == "committed"
    # recomputed from the committed charge (the ledger's PLD), beside the release's analytic ε
    assert listed["epsilon_ledger"] == pytest.approx(
        Epsilons().of([mech], delta=1e-5, accountant="pld")
    )
    assert listed["epsilon_ledger"] == pytest.approx(pe.epsilon, rel=1e-2)
    kinds = {f["kind"] for f in d["findings"]}
    assert not kinds & {"release_not_dp_evaluated", "evaluation_not_charged"}
    (rel,) = d["releases"]
    text = rel["statement_text"]
    assert "Test metrics: DP-evaluated" in text and "test-b1" in text and "attempt 2" in text
    assert DP_TEST_METRICS in rel["statement"]["not_covered"]
    assert EXACT_TEST_METRICS not in rel["statement"]["not_covered"]
    assert rel["statement"]["evaluation"]["reservation"] == "e1"
    assert "Test patients have spent, over all releases so far: test-b1 ε = " in text
    assert "DP-evaluated test metrics" in d["html"]


def test_a_release_without_a_dp_evaluation_under_a_private_gate_is_a_finding():
    d = _audit(_rows(None), {})
    found = [f for f in d["findings"] if f["kind"] == "release_not_dp_evaluated"]
    assert len(found) == 1 and "evaluation.private" in found[0]["detail"]
    (rel,) = d["releases"]
    assert "Test metrics: exact, NOT differentially private" in rel["statement_text"]
    assert EXACT_TEST_METRICS in rel["statement"]["not_covered"]
    assert d["evaluated_releases"] == []


def test_an_exact_release_under_an_exact_policy_is_no_finding():
    d = _audit(_rows(None, private_gate=False), {})
    assert "release_not_dp_evaluated" not in {f["kind"] for f in d["findings"]}
    (rel,) = d["releases"]
    assert EXACT_TEST_METRICS in rel["statement"]["not_covered"]


def test_a_dp_evaluated_release_whose_charge_is_missing_is_a_finding(pe):
    d = _audit(_rows(None), {"private_evaluation": pe.model_dump(mode="json")})
    found = [f for f in d["findings"] if f["kind"] == "evaluation_not_charged"]
    assert len(found) == 1 and "missing" in found[0]["detail"]
    assert d["evaluated_releases"][0]["epsilon_ledger"] is None
