"""The empirical audit prepaid with its candidate (``release.require_empirical_audit: true``,
dpgov.training.prepaid_audit) on real governed runs: SQLite ledger, MLflow store, Opacus.
The module-scoped world of tests/integration/training/conftest.py (399 training patients,
two blocks); two-epoch logistic regressions and 50 canaries: seconds per run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpgov.errors import Refused
from dpgov.gate.empirical import AUDIT_KIND, CHECK_NAME
from dpgov.ledger import Ledger
from dpgov.policy import load_policy
from dpgov.training.governed import run_governed
from dpgov.training.prepaid_audit import TAG_AUDIT_RESERVATION
from tests.cli import run_dpgov

MODEL = "prepaid-model"
REPO = Path(__file__).resolve().parents[3]


def _policy(tmp_path: Path, *, epsilon_per_block: float, require: bool) -> Any:
    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["budget"]["epsilon_per_block"] = epsilon_per_block
    policy["release"]["require_empirical_audit"] = require
    path = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*')))}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return load_policy(path)


def _set(ledger: Ledger, loaded: Any) -> None:
    from dpgov.ledger.policies import set_policy

    set_policy(ledger, loaded, dataset=None, reason="test", actor="tester")


def _spent(ledger: Ledger, loaded: Any) -> dict[str, float]:
    return {
        s.block: s.epsilon_spent
        for s in ledger.budget(loaded.policy.budget, dataset="synth")
        if s.split != "test"
    }


def _gate(version: str) -> Any:
    from dpgov.gate.in_force import policy_in_force
    from dpgov.gate.service import run_gate
    from dpgov.tracking.registry import Registry

    ledger = Ledger.open()
    try:
        loaded = policy_in_force(ledger, "synth")
        return run_gate(MODEL, version, loaded, ledger, Registry(), record=False).decision
    finally:
        ledger.close()


def test_a_candidate_on_the_whole_remaining_budget_is_still_audited_and_releasable(
    home: Path,
    world: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dpgov.accounting import epsilon
    from dpgov.tracking import runs

    ledger = Ledger.open()
    loaded = _policy(tmp_path, epsilon_per_block=2.0, require=True)
    _set(ledger, loaded)
    # the run alone may cost up to 3 > the block limit 2: calibrated alone it would take
    # every block's whole budget; under the policy σ is calibrated for the pair
    params = world.params(small_params(model_name=MODEL, noise_multiplier=None, target_epsilon=3))
    summary = run_governed(params, loaded, ledger=ledger, options=run_options)
    assert summary.model_version is not None and summary.plan["empirical_audit_prepaid"]
    rid = summary.audit_reservation
    assert rid is not None and summary.to_dict()["audit_reservation"] == rid

    # the ledger holds both charges: the candidate's commit and the audit's pending reservation
    audit = ledger.reservation(rid)
    assert audit.status == "pending"
    mech = audit.mechanism
    assert mech.noise_multiplier == summary.plan["noise_multiplier"]
    assert mech.sample_rate == summary.plan["sample_rate"]
    assert audit.planned_steps == summary.steps
    assert sorted(audit.blocks) == sorted(summary.plan["blocks"])
    assert len(ledger.entries(kind="reservation")) == 2 and len(ledger.entries(kind="commit")) == 1
    # this run alone is the candidate's own mechanism, not the pair's
    delta = loaded.policy.budget.delta
    assert summary.epsilon == pytest.approx(epsilon([mech], delta=delta), rel=1e-6)
    pair = epsilon([mech, mech], delta=delta)
    assert pair > summary.epsilon * 1.2
    # the pair took the blocks' whole remaining budget: the audit could not be reserved now
    spent = _spent(ledger, loaded)
    assert all(1.9 < v <= 2.0 * (1 + 1e-9) for v in spent.values()), spent
    with pytest.raises(Refused):
        ledger.reserve(
            dataset="synth",
            blocks=audit.blocks,
            mechanism=mech,
            budget=loaded.policy.budget,
        )
    # the run's tag and privacy statement name the prepaid reservation
    run = runs.read_run(summary.run_id)
    assert run["tags"][TAG_AUDIT_RESERVATION] == rid
    statement = _statement(summary.run_id)
    assert statement["empirical_audit"]["reservation"] == rid
    assert statement["empirical_audit"]["prepaid"] is True
    entries_before = len(ledger.entries())
    ledger.close()
    # dpgov run's output says so too, at 80 columns
    from dpgov.cli.run import _render

    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    _render(summary.to_dict())
    shown = capsys.readouterr().out
    assert "empirical audit prepaid" in shown and rid in shown.replace("\n", "")
    assert max(len(line) for line in shown.splitlines()) <= 80
    # never audited, it stays charged and `dpgov audit` lists it among the pending reservations
    assert rid in _pending_in_audit_report()

    # the gate blocks the release until audited (required), and the audit runs on the prepaid
    # reservation: no new reservation, the prepaid one committed with the steps it ran
    version = str(summary.model_version)
    assert not _gate(version).check(CHECK_NAME).passed
    code, out, err = run_dpgov(
        monkeypatch,
        capsys,
        "audit-model",
        MODEL,
        version,
        "--canaries",
        "50",
        "--data",
        str(world.prepared),
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["prepaid"] is True and data["reservation"] == rid
    ledger = Ledger.open()
    try:
        assert ledger.reservation(rid).status == "committed"
        assert len(ledger.entries(kind="reservation")) == 2  # none reserved at audit time
        commits = ledger.entries(kind="commit")
        assert commits[-1].seq == data["commit_seq"]
        assert commits[-1].payload["reservation"] == rid
        [record] = ledger.entries(kind=AUDIT_KIND)
        assert record.payload["prepaid"] is True
        assert len(ledger.entries()) == entries_before + 2  # the commit and the record
        # still within the limit: the audit was paid for, not added on top
        assert all(v <= 2.0 * (1 + 1e-9) for v in _spent(ledger, loaded).values())
        verification, integrity = ledger.verify_all()
        assert verification.ok and integrity.ok
    finally:
        ledger.close()
    decision = _gate(version)
    check = decision.check(CHECK_NAME)
    assert check.passed and check.observed == data["epsilon_lower_bound"], check.reason
    # releasable: nothing about privacy fails (approvals are a later, human step)
    privacy = {CHECK_NAME, "block_budget", "release_epsilon", "release_delta", "ledger_reservation"}
    assert not privacy & {c.name for c in decision.failing}, decision.summary()


def test_the_pair_that_does_not_fit_is_refused_and_without_the_key_nothing_changes(
    home: Path,
    world: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    tmp_path: Path,
) -> None:
    from dpgov.accounting.filters import filter_epsilon
    from dpgov.accounting.kinds import rdp_vector

    ledger = Ledger.open()
    params = world.params(small_params(model_name=MODEL))  # σ fixed at 1.5: not calibrated
    # without the key (the default policy): one reservation, no audit prepaid
    plain = _policy(tmp_path, epsilon_per_block=8.0, require=False)
    first = run_governed(params, plain, ledger=ledger, options=run_options)
    assert first.audit_reservation is None and "audit_reservation" not in first.to_dict()
    assert first.plan["empirical_audit_prepaid"] is False
    assert len(ledger.entries(kind="reservation")) == 1
    assert TAG_AUDIT_RESERVATION not in _tags(first.run_id)
    assert "empirical_audit" not in _statement(first.run_id)

    # a limit that a second candidate fits (2 charges) but not with its audit (3 charges)
    [res] = ledger.reservations()
    budget = plain.policy.budget
    one = rdp_vector(res.mechanism, budget.orders)
    two = filter_epsilon([2 * v for v in one], budget.delta, budget.orders)
    three = filter_epsilon([3 * v for v in one], budget.delta, budget.orders)
    assert two < three
    strict = _policy(tmp_path, epsilon_per_block=(two + three) / 2, require=True)
    _set(ledger, strict)
    spent = _spent(ledger, strict)
    entries = len(ledger.entries())
    with pytest.raises(Refused) as refused:
        run_governed(params, strict, ledger=ledger, options=run_options)
    message = str(refused.value)
    assert "release.require_empirical_audit" in message and "nothing charged" in message
    assert "\n" not in message
    # nothing charged: the candidate's reservation was released, no audit reservation stands
    assert _spent(ledger, strict) == spent
    assert all(r.status != "pending" for r in ledger.reservations())
    [released] = ledger.entries(kind="release")
    assert "prepaid empirical audit" in released.payload["reason"]
    assert len(ledger.entries()) == entries + 2  # the reservation and its release
    # the same run under the same limit without the key is accepted (behaviour unchanged)
    relaxed = _policy(tmp_path, epsilon_per_block=(two + three) / 2, require=False)
    _set(ledger, relaxed)
    second = run_governed(params, relaxed, ledger=ledger, options=run_options)
    assert second.audit_reservation is None and second.model_version is not None
    ledger.close()


def _pending_in_audit_report() -> list[str]:
    from dpgov.report.audit import run_audit

    report = run_audit(None, None, 24.0)
    return [row["reservation"] for row in report["reservations"]["pending"]]


def _tags(run_id: str) -> dict[str, str]:
    from dpgov.tracking import runs

    return dict(runs.read_run(run_id)["tags"])


def _statement(run_id: str) -> dict[str, Any]:
    import mlflow

    from dpgov.contracts import ARTIFACT_PRIVACY_STATEMENT

    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=ARTIFACT_PRIVACY_STATEMENT
    )
    return dict(json.loads(Path(path).read_text()))


def test_failures_settle_the_prepaid_reservation(
    home: Path,
    world: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses

    from dpgov.tracking.registry import Registry
    from dpgov.training import audit_model

    ledger = Ledger.open()
    loaded = _policy(tmp_path, epsilon_per_block=8.0, require=True)
    _set(ledger, loaded)
    params = world.params(small_params(model_name=MODEL))

    # training fails after a step: the candidate is aborted (charged), its audit, which never
    # ran and has no candidate left to audit, is released
    def killed(steps: int, loss: float) -> None:
        raise RuntimeError("killed mid-training")

    with pytest.raises(RuntimeError, match="killed mid-training"):
        run_governed(
            params,
            loaded,
            ledger=ledger,
            options=dataclasses.replace(run_options, on_step=killed),
        )
    [aborted] = ledger.entries(kind="abort")
    [released] = ledger.entries(kind="release")
    assert "no audit step ran" in released.payload["reason"]
    assert aborted.payload["reservation"] != released.payload["reservation"]
    assert all(r.status != "pending" for r in ledger.reservations())

    # an audit that fails on its prepaid reservation aborts it (charged) and records nothing;
    # the next audit, with no prepaid reservation left, reserves its own charge as before
    summary = run_governed(params, loaded, ledger=ledger, options=run_options)
    rid = summary.audit_reservation
    assert rid is not None

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("killed mid-audit")

    version = str(summary.model_version)
    with monkeypatch.context() as mp, pytest.raises(RuntimeError, match="killed mid-audit"):
        mp.setattr(audit_model, "run_audit", crash)
        audit_model.audit_candidate(
            MODEL, version, ledger=ledger, registry=Registry(), canaries=20, data=world.prepared
        )
    assert ledger.reservation(rid).status == "aborted"
    assert not ledger.entries(kind=AUDIT_KIND)
    reserved = len(ledger.entries(kind="reservation"))
    again = audit_model.audit_candidate(
        MODEL, version, ledger=ledger, registry=Registry(), canaries=20, data=world.prepared
    )
    assert again.prepaid is False and again.reservation != rid
    assert len(ledger.entries(kind="reservation")) == reserved + 1
    ledger.close()
