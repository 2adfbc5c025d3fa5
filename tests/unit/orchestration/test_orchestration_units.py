"""Orchestration pieces that need no Prefect server: cron and answer checks, the environment,
an unreachable server, retry settings of the tasks, the decision as Markdown."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dpgov.errors import UsageError
from tests.cli import run_dpgov
from tests.integration.orchestration import harness

harness.import_prefect()  # with the real stderr (see harness.import_prefect)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("0 3 * * * *", "expected 5 fields"),
        ("61 3 * * *", "not a valid cron expression"),
        ("H 3 * * *", "not a valid cron expression"),
    ],
)
def test_bad_cron_is_one_clear_line(expr: str, why: str) -> None:
    from pipelines.deployments import check_cron

    with pytest.raises(UsageError, match=why) as err:
        check_cron(expr)
    assert expr in str(err.value) and "\n" not in str(err.value)


def test_good_cron_passes() -> None:
    from pipelines.deployments import check_cron

    assert check_cron("0 3 1 * *") == "0 3 1 * *"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"approver": "ana"}, "approval input: decision is missing"),
        ({"decision": "approve"}, "approval input: approver is missing"),
        ({"decision": "maybe", "approver": "ana"}, "approval input: decision:"),
        ({"decision": "refuse", "approver": "ana"}, "a refusal needs a note"),
        ({"decision": "approve", "approver": "  "}, "approver is empty"),
    ],
)
def test_approval_answer_with_missing_fields(data: dict, message: str) -> None:
    from pipelines.approval import parse_answer

    with pytest.raises(UsageError, match=message):
        parse_answer(data)


def test_approval_answer_ok() -> None:
    from pipelines.approval import parse_answer

    a = parse_answer({"decision": "refuse", "approver": "ana", "note": "gap too wide"})
    assert (a.decision, a.approver, a.note) == ("refuse", "ana", "gap too wide")


def test_unreachable_server_names_the_url() -> None:
    from pipelines.runtime import check_server

    url = f"http://127.0.0.1:{_free_port()}/api"
    with pytest.raises(UsageError, match=f"Prefect server at {url} does not answer"):
        check_server(url, timeout=2)


def test_env_defaults_keep_prefect_under_the_dpgov_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.runtime import scoped_env

    for key in ("PREFECT_HOME", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")  # the user's choice wins
    with scoped_env(tmp_path) as chosen:
        assert os.environ["PREFECT_HOME"] == str(tmp_path / "prefect")
        assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 60
        assert "PREFECT_SERVER_ANALYTICS_ENABLED" not in chosen
    assert "PREFECT_HOME" not in os.environ


def test_step_clock() -> None:
    from pipelines.runtime import clock_snapshot, start_clock, timed

    start_clock()
    with timed("a"):
        pass
    with timed("a"):
        pass
    assert set(clock_snapshot()) == {"a"}


def test_only_steps_that_cannot_spend_twice_retry() -> None:
    from prefect.cache_policies import NO_CACHE

    from dpgov.training.governed import RETRYABLE, STEPS
    from pipelines import tasks
    from pipelines.steps import as_task

    # the governed run's steps become tasks through the flows' step runner
    assert {"validate", "load-data", "budgets", "gate"} == RETRYABLE

    def step_fn() -> None:
        return None

    step_tasks = {name: as_task(name, step_fn, retry=name in RETRYABLE) for name in STEPS}
    spending = ["plan", "reserve", "train", "commit", "evaluate", "track"]
    never = [step_tasks[n] for n in spending] + [
        tasks.retire_blocks,
        tasks.record_skip,
        tasks.record_approval,
        tasks.record_refusal,
        tasks.promote,
        tasks.stage_arrival,
        tasks.publish_arrival,
    ]
    assert all(t.retries == 0 for t in never)
    safe = [step_tasks[n] for n in sorted(RETRYABLE)] + [
        tasks.block_budgets,
        tasks.newest_data,
        tasks.dvc_version,
        tasks.register_blocks,
        tasks.audit,
    ]
    assert all(t.retries and t.retries > 0 for t in safe)
    assert all(t.cache_policy is NO_CACHE and t.persist_result is False for t in never + safe)


def test_dpgov_errors_are_not_retried() -> None:
    from pipelines.tasks import transient

    class S:
        def __init__(self, data: object) -> None:
            self.data = data

    assert not transient(None, None, S(UsageError("bad")))
    assert transient(None, None, S(OSError("disk")))


def test_decision_markdown_lists_failing_checks_first() -> None:
    from dpgov.gate.markdown import decision_markdown

    md = decision_markdown(
        {
            "model": "m",
            "version": "3",
            "allowed": False,
            "policy_sha256": "ab" * 32,
            "approvers": [],
            "checks": [
                {
                    "name": "block_budget:d/b",
                    "observed": 1.23401,
                    "limit": 2.0,
                    "passed": True,
                    "reason": "ok",
                },
                {
                    "name": "approvals",
                    "observed": 0,
                    "limit": 1,
                    "passed": False,
                    "reason": "0 of 1 | required",
                },
            ],
        },
        policy_path="p.yaml",
        ledger_seq=7,
    )
    assert md.startswith("# gate: m version 3 — BLOCKED")
    assert "- `approvals`: 0 of 1 \\| required" in md
    assert "| `block_budget:d/b` | 1.235 | 2.000 | pass | ok |" in md
    assert "ledger entry 7" in md


def _dpgov(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str):
    return run_dpgov(monkeypatch, capsys, *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["schedule", "--cron", "every day"], "error: --cron 'every day': expected 5 fields"),
        (
            ["schedule", "--cron", "0 3 * * *", "--audit-cron", "0 99 * * *"],
            "error: --audit-cron '0 99 * * *': not a valid cron expression",
        ),
        (
            ["flows", "answer", "1234", "--decision", "approve"],
            "error: approval input: approver is missing",
        ),
        (
            ["flows", "run", "retraining", "--wait", "1"],
            "error: deployment 'retraining': expected FLOW/DEPLOYMENT",
        ),
        (
            ["flows", "run", "retraining/x", "-p", "oops"],
            "error: --param 'oops': expected KEY=VALUE",
        ),
    ],
)
def test_bad_input_on_the_command_line_is_one_line_and_exit_2(
    dpgov_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    code, out, err = _dpgov(monkeypatch, capsys, *args)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(message), err
    assert out == ""


def test_run_without_prepared_data_stops_before_any_flow(
    dpgov_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"train:\n  data: {tmp_path / 'nowhere'}\n")
    code, out, err = _dpgov(monkeypatch, capsys, "run", "--params", str(params))
    assert code == 2 and out == ""
    assert err.strip() == (
        f"error: train.data: no prepared data at {tmp_path / 'nowhere'} "
        "(run `dpgov data prepare` first)"
    )
    assert not (dpgov_home / "prefect").exists()  # no server was started
