"""A release that does not ship and an audit that finds something fail their flow runs (state
Failed, exit 1), on the session's real Prefect harness: the approval flow's signed approval is
recorded, the promotion it then attempts is blocked; the audit flow publishes its findings and
fails."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.orchestration.conftest import Cohort
from tests.integration.orchestration.test_approval_and_deployments import (
    _candidate,
    _dpgov,
    _open_policy,
    _wait_paused,
)


def test_audit_flow_with_findings_fails_after_publishing(prefect_api: str, home: Path) -> None:
    import sqlalchemy as sa
    from prefect.artifacts import Artifact

    from dpgov.errors import Refused
    from dpgov.ledger import Ledger
    from pipelines.audit import audit

    led = Ledger.open()
    led.add_block(dataset="d", block="b", patients=10, data_version=None)
    with led.engine.begin() as conn:  # an entry edited behind the ledger's back (SQLite home)
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS dpgov_entries_no_update")
        conn.execute(sa.text("UPDATE dpgov_entries SET actor = 'mallory'"))
    led.close()
    state = audit(return_state=True)
    assert state.is_failed(), state
    with pytest.raises(Refused, match=r"audit: \d+ finding\(s\)"):
        state.result()
    art = Artifact.get("audit-report")
    assert art is not None and "FINDING" in str(art.data)


def test_approval_flow_fails_when_the_approved_promotion_is_blocked(
    prefect_api: str,
    home: Path,
    cohort: Callable[..., Cohort],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dpgov.errors import Refused
    from dpgov.gate import approvals
    from dpgov.ledger import Ledger
    from dpgov.ledger.policies import set_policy
    from dpgov.ledger.releases import binding_of
    from dpgov.policy import load_policy
    from pipelines.approval import approval

    policy = _open_policy(tmp_path)
    key = tmp_path / "ana_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ana.lima", "-f", str(key)],
        check=True,
    )
    doc = yaml.safe_load(policy.read_text())
    doc["approvals"]["ssh_keys"] = {"ana.lima": key.with_suffix(".pub").read_text().strip()}
    doc["approvals"]["required"] = 2  # one signed approval is recorded, and still blocks
    policy.write_text(yaml.safe_dump(doc))
    led0 = Ledger.open()
    set_policy(led0, load_policy(policy), dataset=None, reason="blocked test", actor="tester")
    led0.close()
    run = _candidate(cohort(), policy)
    model, version = run["model_name"], run["model_version"]
    assert run["gate"]["failing"] == ["approvals"]

    states: dict[str, Any] = {}

    def target() -> None:
        states["s"] = approval(
            model, version, timeout_seconds=120, poll_interval=1, return_state=True
        )

    t = threading.Thread(target=target, daemon=True)
    t.start()
    flow_run = _wait_paused("approval")
    led = Ledger.open()
    message = approvals.message_for("approval", model, version, binding_of(led, model, version))
    led.close()
    (tmp_path / "msg").write_bytes(message)
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", "dpgov-approval", "-f", str(key),
         str(tmp_path / "msg")],
        check=True,
    )  # fmt: skip
    code, _, err = _dpgov(
        monkeypatch, capsys, "flows", "answer", flow_run, "--decision", "approve",
        "--by", "ana.lima", "--note", "fine", "--signature", str(tmp_path / "msg.sig"),
    )  # fmt: skip
    assert code == 0, err
    t.join(timeout=120)
    state = states["s"]
    assert state.is_failed(), state
    with pytest.raises(Refused, match="promotion blocked by approvals") as raised:
        state.result()
    assert raised.value.exit_code == 1
    led = Ledger.open()
    assert [e.payload["identity"] for e in led.entries("approval")] == ["ana.lima"]
    assert led.entries("promotion") == []
    led.close()
