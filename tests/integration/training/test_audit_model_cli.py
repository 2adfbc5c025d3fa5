"""``dpgov audit-model`` on a real governed candidate (SQLite ledger, MLflow store, Opacus):
charged to the candidate's blocks like a run, recorded in the chained ledger and on the
candidate's MLflow run, read back by the gate's ``empirical_epsilon`` check. Few canaries and
a two-epoch logistic regression: seconds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dpgov.gate.empirical import (
    ARTIFACT_EMPIRICAL_AUDIT,
    AUDIT_KIND,
    CHECK_NAME,
    METRIC_CEILING,
    METRIC_CLAIMED,
    METRIC_LOWER_BOUND,
)
from dpgov.ledger import Ledger
from dpgov.policy import load_policy
from dpgov.training.governed import run_governed
from tests.cli import run_dpgov

MODEL = "test-model"


@pytest.fixture
def candidate(
    home: Path,
    world: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> Any:
    params = world.params(small_params(model_name=MODEL))
    summary = run_governed(
        params, load_policy(write_policy()), ledger=Ledger.open(), options=run_options
    )
    assert summary.model_version is not None
    return summary


def _gate_check(version: str) -> Any:
    from dpgov.gate.in_force import policy_in_force
    from dpgov.gate.service import run_gate
    from dpgov.tracking.registry import Registry

    ledger = Ledger.open()
    try:
        loaded = policy_in_force(ledger, "synth")
        decision = run_gate(MODEL, version, loaded, ledger, Registry(), record=False).decision
    finally:
        ledger.close()
    return decision.check(CHECK_NAME)


def test_audit_model_charges_records_and_feeds_the_gate(
    candidate: Any,
    world: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # one governed candidate for every case (a run costs seconds): bad input first
    _bad_input_exits_2_and_charges_nothing(candidate, monkeypatch, capsys, tmp_path)
    version = str(candidate.model_version)
    _a_crash_mid_audit_stays_charged(candidate, world, monkeypatch)
    before = _gate_check(version)
    assert before.passed and before.reason.startswith("off")
    ledger = Ledger.open()
    charges_before = len(ledger.entries(kind="commit"))
    ledger.close()

    code, out, err = run_dpgov(
        monkeypatch,
        capsys,
        "audit-model",
        MODEL,
        version,
        "--canaries",
        "200",
        "--data",
        str(world.prepared),
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    for key in ("epsilon_lower_bound", "epsilon_claimed", "ceiling", "delta", "confidence"):
        assert isinstance(data[key], float)
    assert data["canaries"] == 200 and data["threat_model"] == "white-box"
    assert 0 <= data["correct"] <= data["guesses"] <= 200
    assert data["passed"] is True and data["epsilon_lower_bound"] <= data["epsilon_claimed"]
    assert data["epsilon_claimed"] == pytest.approx(candidate.epsilon, rel=1e-6)

    ledger = Ledger.open()
    try:
        commits = ledger.entries(kind="commit")
        assert len(commits) == charges_before + 1  # the audit is charged like a run
        assert commits[-1].seq == data["commit_seq"]
        [record] = ledger.entries(kind=AUDIT_KIND)  # bad input recorded nothing
        assert record.seq == data["ledger_seq"]
        assert record.payload["epsilon_lower_bound"] == data["epsilon_lower_bound"]
        verification, integrity = ledger.verify_all()  # the new entry kind verifies
        assert verification.ok and integrity.ok
    finally:
        ledger.close()

    from dpgov.tracking import runs

    run = runs.read_run(data["run_id"])
    assert run["metrics"][METRIC_LOWER_BOUND] == pytest.approx(data["epsilon_lower_bound"])
    assert run["metrics"][METRIC_CLAIMED] == pytest.approx(data["epsilon_claimed"])
    assert run["metrics"][METRIC_CEILING] == pytest.approx(data["ceiling"])
    assert ARTIFACT_EMPIRICAL_AUDIT in run["artifacts"]

    after = _gate_check(version)
    assert after.passed and after.observed == data["epsilon_lower_bound"]
    assert "no violation shown" in after.reason
    # the readable table fits 80 columns and names both numbers and the ceiling
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_dpgov(
        monkeypatch,
        capsys,
        "audit-model",
        MODEL,
        version,
        "--canaries",
        "50",
        "--threat-model",
        "black-box",
        "--data",
        str(world.prepared),
    )
    assert code == 0, err
    assert "ε lower bound" in out and "ε claimed" in out and "ceiling" in out
    assert "black-box input canaries" in out.replace("\n", " ")
    assert max(len(line) for line in out.splitlines()) <= 80
    # a later record showing a violation (forged here) fails the gate: the newest one counts
    _a_recorded_violation_fails_the_gate(candidate)
    # an audit whose bound exceeds the claim exits 1, and is charged and recorded all the same
    _a_violating_audit_exits_1(candidate, world, monkeypatch, capsys)
    _an_edited_audit_entry_breaks_the_chain()


def _a_crash_mid_audit_stays_charged(
    candidate: Any, world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audit that fails after it reserved leaves its reservation aborted and fully charged
    (its steps are not known: settled as if all ran), and records no audit."""
    from dpgov.tracking.registry import Registry
    from dpgov.training import audit_model

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("killed mid-audit")

    ledger = Ledger.open()
    try:
        with monkeypatch.context() as mp, pytest.raises(RuntimeError, match="killed mid-audit"):
            mp.setattr(audit_model, "run_audit", crash)
            audit_model.audit_candidate(
                MODEL,
                str(candidate.model_version),
                ledger=ledger,
                registry=Registry(),
                canaries=20,
                data=world.prepared,
            )
        [aborted] = ledger.entries(kind="abort")
        info = ledger.reservation(aborted.payload["reservation"])
        assert info.status == "aborted" and not ledger.entries(kind=AUDIT_KIND)
    finally:
        ledger.close()


def _a_violating_audit_exits_1(
    candidate: Any,
    world: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The exit code and records of a violation (the audit's own result replaced here: the
    broken mechanisms that produce one are tests/integration/training/test_canary_audit.py)."""
    import dataclasses

    from dpgov.training import audit_model

    real = audit_model.run_audit

    def violating(*args: Any, **kwargs: Any) -> Any:
        r = real(*args, **kwargs)
        return dataclasses.replace(r, epsilon_lower_bound=r.epsilon_claimed + 1, passed=False)

    version = str(candidate.model_version)
    with monkeypatch.context() as mp:
        mp.setattr(audit_model, "run_audit", violating)
        code, out, err = run_dpgov(
            monkeypatch,
            capsys,
            "audit-model",
            MODEL,
            version,
            "--canaries",
            "20",
            "--data",
            str(world.prepared),
            "--json",
        )
    assert code == 1, err
    data = json.loads(out)
    assert data["passed"] is False and data["epsilon_lower_bound"] > data["epsilon_claimed"]
    check = _gate_check(version)
    assert not check.passed and check.observed == data["epsilon_lower_bound"]


def _an_edited_audit_entry_breaks_the_chain() -> None:
    """The empirical_audit entries are chained: lowering a recorded bound (the append-only
    trigger dropped first, as the table's owner could) fails verification."""
    import sqlalchemy as sa

    from dpgov.ledger.chain import canonical

    ledger = Ledger.open()
    try:
        entry = ledger.entries(kind=AUDIT_KIND)[-1]
        forged = dict(entry.payload, epsilon_lower_bound=0.0)
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER dpgov_entries_no_update")
            conn.execute(
                sa.text("UPDATE dpgov_entries SET payload = :p WHERE seq = :s"),
                {"p": canonical(forged), "s": entry.seq},
            )
    finally:
        ledger.close()
    fresh = Ledger.open()
    try:
        assert not fresh.verify().ok
    finally:
        fresh.close()


def _a_recorded_violation_fails_the_gate(candidate: Any) -> None:
    version = str(candidate.model_version)
    ledger = Ledger.open()
    ledger.append(
        kind=AUDIT_KIND,
        payload={
            "model": MODEL,
            "version": version,
            "epsilon_lower_bound": candidate.epsilon + 1.0,
            "epsilon_claimed": candidate.epsilon,
            "ceiling": 5.0,
            "canaries": 1000,
            "guesses": 500,
            "correct": 499,
            "delta": 1e-5,
            "confidence": 0.95,
            "threat_model": "white-box",
        },
    )
    ledger.close()
    check = _gate_check(version)
    assert not check.passed and "violated" in check.reason


def _bad_input_exits_2_and_charges_nothing(
    candidate: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    version = str(candidate.model_version)
    ledger = Ledger.open()
    n = len(ledger.entries())
    ledger.close()
    for args, match in [
        (("--threat-model", "grey-box"), "--threat-model"),
        (("--canaries", "1"), "--canaries"),
        (("--data", str(tmp_path / "nowhere")), "does not exist"),
    ]:
        code, _out, err = run_dpgov(monkeypatch, capsys, "audit-model", MODEL, version, *args)
        assert code == 2 and match in err, err
    ledger = Ledger.open()
    assert len(ledger.entries()) == n
    ledger.close()
