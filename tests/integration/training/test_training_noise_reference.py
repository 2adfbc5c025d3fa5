"""Governed runs and the two policy keys of issue 16: reproducible noise is refused before any
charge unless the policy allows it (then recorded and disclosed), and a policy that forbids the
non-private reference trains none and turns the gate's widening checks off."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpgov.errors import Refused
from dpgov.gate.reference import REFERENCE_OFF
from dpgov.ledger import Ledger
from dpgov.policy import load_policy
from dpgov.testing.policies import put_in_force
from dpgov.tracking import runs
from dpgov.training.governed import run_governed

REPO = Path(__file__).resolve().parents[3]


def _policy(tmp_path: Path, **release: Any) -> Path:
    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["release"].update(release)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def test_reproducible_noise_under_the_default_policy_is_refused_before_any_charge(
    home: Path, world: Any, run_options: Any, small_params: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = Ledger.open()
    policy = _policy(tmp_path)
    put_in_force(policy, ledger=ledger)
    before = len(ledger.entries())
    params = world.params(small_params(reproducible_noise=True))
    with pytest.raises(Refused, match="allow_reproducible_noise: false") as err:
        run_governed(params, ledger=ledger, options=run_options)
    assert err.value.exit_code == 1
    assert len(ledger.entries()) == before  # nothing reserved, nothing registered


def test_reproducible_noise_allowed_is_recorded_and_disclosed(
    home: Path, world: Any, run_options: Any, small_params: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = Ledger.open()
    put_in_force(_policy(tmp_path, allow_reproducible_noise=True), ledger=ledger)
    params = world.params(small_params(reproducible_noise=True))
    summary = run_governed(params, ledger=ledger, options=run_options)
    run = runs.read_run(summary.run_id)
    assert run["params"]["noise_source"] == "seed"
    assert run["tags"]["dpgov.noise_source"] == "seed"
    assert runs.read_json(summary.run_id, "candidate_facts.json")["noise_source"] == "seed"
    assert runs.read_json(summary.run_id, "privacy_statement.json")["noise_source"] == "seed"
    assert summary.gate is not None
    line = next(c for c in summary.gate["checks"] if c["name"] == "secret_noise")
    assert line["passed"] and "allowed by the policy" in line["reason"]


def test_a_policy_forbidding_the_reference_trains_none_and_turns_widening_off(
    home: Path, world: Any, run_options: Any, small_params: Callable[..., Any], tmp_path: Path
) -> None:
    ledger = Ledger.open()
    policy = _policy(tmp_path, allow_reference=False)
    put_in_force(policy, ledger=ledger)
    params = world.params(small_params(reference=True))
    summary = run_governed(params, load_policy(policy), ledger=ledger, options=run_options)
    assert summary.reference_run_id is None and summary.reference_auroc is None
    assert runs.read_json(summary.run_id, "candidate_facts.json")["reference"] is None
    statement = runs.read_json(summary.run_id, "privacy_statement.json")
    assert statement["non_private_reference"] is None
    assert statement["noise_source"] == "os_entropy"
    assert summary.gate is not None
    widening = [c for c in summary.gate["checks"] if "_gap_widening:" in c["name"]]
    assert widening and all(c["reason"] == REFERENCE_OFF and c["passed"] for c in widening)
    secret = next(c for c in summary.gate["checks"] if c["name"] == "secret_noise")
    assert secret["passed"] and secret["observed"] == "os_entropy"


def test_a_release_gated_against_the_reference_is_listed_by_the_audit(
    home: Path,
    world: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Train with the reference, release through the gate (widening judged against it), and
    audit: the release is listed and its statement says it depended on a non-private model."""
    from dpgov.gate.approvals import record_approval
    from dpgov.gate.promotion import promote
    from dpgov.tracking.registry import Registry
    from tests.cli import run_dpgov

    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["utility"] = {"min_auroc": None, "max_calibration_error": None}
    policy["fairness"] = {  # gaps off (tiny data); widening judged, with room to pass
        "max_auroc_gap": None,
        "max_fnr_gap": None,
        "max_auroc_gap_widening": 1.0,
        "max_fnr_gap_widening": 1.0,
        "min_group_size": 10,
        "min_group_positives": 1,
        "require_judgeable": False,
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("DPGOV_ACTOR", "trainer")
    ledger = Ledger.open()
    loaded = put_in_force(path, ledger=ledger, actor="trainer")
    params = world.params(small_params(reference=True))
    summary = run_governed(params, ledger=ledger, options=run_options)
    assert summary.reference_run_id is not None and summary.model_version is not None
    registry = Registry()
    monkeypatch.setattr("dpgov.identity.os_user", lambda: "alice")
    record_approval(
        model="test-model",
        version=summary.model_version,
        by="alice",
        note="reviewed",
        policy=loaded,
        ledger=ledger,
        registry=registry,
    )
    promote(
        model="test-model",
        version=summary.model_version,
        policy=loaded,
        ledger=ledger,
        registry=registry,
    )
    ledger.close()
    _, out, _ = run_dpgov(monkeypatch, capsys, "audit", "--json")
    report = json.loads(out)
    (listed,) = report["reference_releases"]
    assert (listed["model"], listed["version"]) == ("test-model", summary.model_version)
    assert listed["reference_run"] == summary.reference_run_id
    assert "release_used_reference" not in {f["kind"] for f in report["findings"]}
    (rel,) = report["releases"]
    assert "Non-private reference:" in rel["statement_text"]
    assert summary.reference_run_id in rel["statement_text"]
    assert "operating-system entropy" in rel["statement_text"]
    _, out, _ = run_dpgov(monkeypatch, capsys, "audit")
    assert "non-private reference: test-model" in out
