"""The approval flow paused for a typed answer (given through ``dpgov flows answer``), and the
deployments sent to a work pool of the harness server (``dpgov schedule --pool``), triggered by
name (unknown names: exit 2)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli import run_dpgov
from tests.integration.orchestration.conftest import Cohort, write_policy


def _dpgov(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    return run_dpgov(monkeypatch, capsys, *args, prefect_defaults=True)


def _open_policy(folder: Path) -> Path:
    """Utility floors off too: a two-epoch model on synthetic data is judged on approvals."""
    path = write_policy(folder)
    policy = yaml.safe_load(path.read_text())
    policy["utility"].update({"min_auroc": None, "max_calibration_error": None})
    path.write_text(yaml.safe_dump(policy))
    return path


def _wait_paused(flow_name: str, timeout: float = 60) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                ),
            )
            if runs:
                return str(runs[0].id)
            time.sleep(0.5)
    raise AssertionError(f"no paused {flow_name} flow run within {timeout} s")


def _candidate(c: Cohort, policy: Path) -> dict[str, Any]:
    from pipelines.governed import governed_run
    from pipelines.ingest import ingest

    ingest(
        arrival=str(c.arrivals[0]),
        raw=str(c.raw),
        prepared=str(c.prepared),
        repo=str(c.root),
        params=c.params(),
        push=False,
    )
    return governed_run(params=c.params()).to_dict()  # under the policy in force


def test_approval_pauses_for_a_typed_answer_then_promotes_or_refuses(
    prefect_api: str,
    home: Path,
    cohort: Callable[..., Cohort],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dpgov.gate import approvals
    from dpgov.ledger import Ledger
    from dpgov.ledger.policies import set_policy
    from dpgov.ledger.releases import binding_of
    from dpgov.policy import load_policy
    from pipelines.approval import approval

    policy = _open_policy(tmp_path)
    # ana.lima's own SSH key, listed in the policy: a signed answer to the pause counts
    key = tmp_path / "ana_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ana.lima", "-f", str(key)],
        check=True,
    )
    doc = yaml.safe_load(policy.read_text())
    doc["approvals"]["ssh_keys"] = {"ana.lima": key.with_suffix(".pub").read_text().strip()}
    policy.write_text(yaml.safe_dump(doc))
    led0 = Ledger.open()  # the approval flow enforces the policy in force: set it
    set_policy(led0, load_policy(policy), dataset=None, reason="approval test", actor="tester")
    led0.close()
    run = _candidate(cohort(), policy)
    model, version = run["model_name"], run["model_version"]
    assert run["gate"]["failing"] == ["approvals"]

    results: dict[str, Any] = {}

    def start(key: str) -> threading.Thread:
        def target() -> None:
            results[key] = approval(model, version, timeout_seconds=120, poll_interval=1)

        t = threading.Thread(target=target, daemon=True)
        t.start()
        return t

    # an answer without the approver: one line, exit 2, the flow stays paused
    t = start("approve")
    flow_run = _wait_paused("approval")
    code, _, err = _dpgov(monkeypatch, capsys, "flows", "answer", flow_run, "--decision", "approve")
    assert code == 2  # (the paused flow's own log lines may share stderr in this process)
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: approval input: approver is missing (needs decision, approver, and a note "
        "to refuse)"
    ]
    code, out, err = _dpgov(
        monkeypatch, capsys, "flows", "answer", flow_run, "--decision", "approve",
        "--by", "ana.lima", "--note", "gaps fine", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["approver"] == "ana.lima"
    t.join(timeout=120)
    # the answer is typed text the worker records: unsigned, it counts for nothing
    assert results["approve"]["status"] == "not recorded"
    assert f"dpgov approve {model} {version}" in results["approve"]["reason"]
    led = Ledger.open()
    assert led.entries("approval") == [] and led.entries("promotion") == []
    led.close()

    # ana.lima approves as herself (who acts: the OS user), then the release is promoted
    monkeypatch.setattr("dpgov.identity.os_user", lambda: "ana.lima")
    code, _, err = _dpgov(
        monkeypatch, capsys, "approve", model, version, "--note", "gaps fine", "--sign", str(key)
    )  # her key is in the policy: her approvals count only signed
    assert code == 0, err
    code, _, err = _dpgov(monkeypatch, capsys, "promote", model, version)
    assert code == 0, err

    # a refusal answered through the pause with ana.lima's signature over the shown message:
    # `flows answer --signature` carries it to the flow, which records it
    t = start("refuse")
    flow_run = _wait_paused("approval")
    led = Ledger.open()
    message = approvals.message_for("refusal", model, version, binding_of(led, model, version))
    led.close()
    (tmp_path / "msg").write_bytes(message)
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", "dpgov-approval", "-f", str(key),
         str(tmp_path / "msg")],
        check=True,
    )  # fmt: skip
    code, out, err = _dpgov(
        monkeypatch, capsys, "flows", "answer", flow_run, "--decision", "refuse",
        "--by", "ana.lima", "--note", "drift seen in 2002",
        "--signature", str(tmp_path / "msg.sig"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["signed"] is True
    t.join(timeout=120)
    assert results["refuse"]["status"] == "refused", results["refuse"]

    led = Ledger.open()
    assert [e.payload["identity"] for e in led.entries("approval")] == ["ana.lima"]
    assert [e.payload["identity"] for e in led.entries("refusal")] == ["ana.lima"]
    assert [e.payload["version"] for e in led.entries("promotion")] == [version]


def test_deployments_go_to_a_work_pool_and_unknown_names_are_refused(
    prefect_api: str,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from prefect import get_client

    code, out, err = _dpgov(
        monkeypatch, capsys, "schedule", "--cron", "0 3 1 * *", "--audit-cron", "0 6 * * *",
        "--pool", "gpu-test", "--json",
    )  # fmt: skip
    assert code == 0, err
    made = {d["name"]: d for d in json.loads(out)["deployments"]}
    assert made["retraining/dpgov-retraining"]["schedules"] == ["0 3 1 * *"]
    assert made["audit/dpgov-audit"]["schedules"] == ["0 6 * * *"]
    assert {d["work_pool"] for d in made.values()} == {"gpu-test"}
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("gpu-test")
        d = client.read_deployment_by_name("retraining/dpgov-retraining")
    assert pool.type == "process"
    assert d.entrypoint == "pipelines.retraining.retraining"  # importable wherever dpgov is
    assert d.parameters["require_new_data"] is True
    assert d.parameters["params"]["train"]["target_epsilon"] == 2.0  # the embedded defaults

    code, _, err = _dpgov(monkeypatch, capsys, "flows", "run", "retraining/nightly")
    assert code == 2
    assert err.startswith("error: unknown deployment 'retraining/nightly'; known: ")
    assert "retraining/dpgov-retraining" in err and len(err.strip().splitlines()) == 1
