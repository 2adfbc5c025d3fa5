"""What policy_set entries mean (dpgov.ledger.policies.history), from the entries alone: the
rules the writing commands keep also hold for entries written around them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dpgov.ledger.chain import canonical
from dpgov.ledger.policies import history
from dpgov.ledger.verified import LedgerInconsistent, VPolicyEntry
from dpgov.policy import load_policy
from dpgov.report.checks.policy_in_force import check_policy_in_force
from dpgov.report.replay import RawEntry
from dpgov.testing.policies import write_policy


def _payload(path: Path, action: str = "set", **more: Any) -> dict[str, Any]:
    loaded = load_policy(path)
    body = {
        "yaml": loaded.text,
        "json": json.loads(canonical(loaded.policy.model_dump(mode="json"))),
        "sha256": loaded.sha256,
        "file": str(path),
    }
    return {"action": action, "dataset": None, "policy": body, "reason": "r", **more}


def _entry(seq: int, actor: str, payload: dict[str, Any]) -> VPolicyEntry:
    return VPolicyEntry(seq, f"2026-01-01T00:00:{seq:02d}+00:00", actor, payload)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "a": write_policy(tmp_path / "a.yaml", budget={"epsilon_per_block": 4.0}),
        "b": write_policy(tmp_path / "b.yaml", budget={"epsilon_per_block": 20.0}),
        "named": write_policy(
            tmp_path / "n.yaml",
            budget={"epsilon_per_block": 9.0},
            approvals={"approvers": ["bob", "carol"], "required": 2},
        ),
    }


def test_a_set_by_someone_else_after_the_first_changes_nothing(files):
    h = history([_entry(1, "alice", _payload(files["a"])), _entry(2, "eve", _payload(files["b"]))])
    assert h.in_force().loaded.policy.budget.epsilon_per_block == 4.0
    assert h.ignored == [(2, "eve may not set the policy")]


def test_a_proposal_counts_only_eligible_distinct_approvers(files):
    h = history(
        [
            _entry(1, "alice", _payload(files["named"])),
            _entry(2, "alice", _payload(files["b"], "propose")),
            _entry(3, "alice", {"action": "approve", "proposal": 2}),  # the proposer
            _entry(4, "mallory", {"action": "approve", "proposal": 2}),  # not an approver
            _entry(5, "bob", {"action": "approve", "proposal": 2}),
            _entry(6, "BOB", {"action": "approve", "proposal": 2}),  # bob again
        ]
    )
    assert h.in_force().loaded.policy.budget.epsilon_per_block == 9.0  # 1 of 2 approvals
    assert [s for s, _ in h.ignored] == [3, 4, 6]
    h2 = history(
        [*_history_entries(files), _entry(7, "carol", {"action": "approve", "proposal": 2})]
    )
    assert h2.in_force().seq == 7 and h2.in_force().approvers == ("bob", "carol")
    assert h2.in_force().loaded.policy.budget.epsilon_per_block == 20.0
    assert h2.in_force(seq=6).seq == 1  # before the last approval, the old policy


def _history_entries(files: dict[str, Path]) -> list[VPolicyEntry]:
    return [
        _entry(1, "alice", _payload(files["named"])),
        _entry(2, "alice", _payload(files["b"], "propose")),
        _entry(5, "bob", {"action": "approve", "proposal": 2}),
    ]


def test_a_recorded_policy_whose_text_does_not_hash_to_its_sha_is_refused(files):
    payload = _payload(files["a"])
    payload["policy"]["yaml"] = payload["policy"]["yaml"].replace("4.0", "40.0")
    with pytest.raises(LedgerInconsistent, match="does not hash"):
        history([_entry(1, "alice", payload)])


def test_the_audit_reports_entries_that_changed_nothing(files):
    rows = [
        RawEntry(1, "policy_set", "", "t1", "alice", "", "h1", None, _payload(files["a"])),
        RawEntry(2, "policy_set", "", "t2", "eve", "", "h2", None, _payload(files["b"])),
    ]
    found = check_policy_in_force(rows)
    assert [f.kind for f in found] == ["policy_change_invalid"]
    assert "eve may not set" in found[0].detail
