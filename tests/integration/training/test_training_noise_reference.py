"""Governed runs and the two policy keys of issue 16: reproducible noise is refused before any
charge unless the policy allows it (then recorded and disclosed), and a policy that forbids the
non-private reference trains none and turns the gate's widening checks off."""

from __future__ import annotations

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
