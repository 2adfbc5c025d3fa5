"""The flows in-process on the session's Prefect test harness: ingest with real DVC and git,
governed runs with their artifacts, retraining over data versions, skips on record."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dpgov.testing.policies import put_in_force
from tests.integration.orchestration.conftest import Cohort, write_policy


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows given no validation folder record validations under ``data/validation`` of the
    working directory (a DVC project's root): each test gets its own, not the repository's."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


def _artifact(key: str) -> Any:
    from prefect.artifacts import Artifact

    return Artifact.get(key)


def _ingest(c: Cohort, k: int) -> dict[str, Any]:
    from pipelines.ingest import ingest

    return ingest(
        arrival=str(c.arrivals[k]),
        raw=str(c.raw),
        prepared=str(c.prepared),
        repo=str(c.root),
        params=c.params(),
        git_commit=True,
    )


def test_ingest_versions_with_dvc_and_registers_new_blocks(
    prefect_api: str, home: Path, cohort: Callable[..., Cohort]
) -> None:
    from dpgov.data.ingest import checkout_newest
    from dpgov.ledger import Ledger

    c = cohort()
    first = _ingest(c, 0)
    # the new training blocks, then their test blocks (the test split's patients)
    assert first["new_blocks"] == ["2001", "2002"]
    assert first["registered"] == ["2001", "2002", "test-2001", "test-2002"]
    assert set(first["dvc"]["added"]) == {"raw/synth.csv", "prepared/synth"}
    assert first["dvc"]["pushed"] > 0 and first["dvc"]["git_commit"]
    assert (c.root / "prepared" / "synth.dvc").is_file()

    second = _ingest(c, 1)
    assert second["new_blocks"] == ["2003", "2004"]
    assert second["registered"] == ["2003", "2004", "test-2003", "test-2004"]
    assert second["blocks"]["2001"] == first["blocks"]["2001"]
    assert second["data_version"] != first["data_version"]
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=c.root, capture_output=True, text=True, check=True
    ).stdout
    assert log.count("dpgov ingest") == 2
    blocks = {b.block: b for b in Ledger.open().blocks("synth")}
    assert blocks["2001"].data_version == first["data_version"]
    assert blocks["2003"].data_version == second["data_version"]

    # a worker with a fresh checkout: the prepared folder comes back from the DVC remote
    shutil.rmtree(c.prepared)
    shutil.rmtree(c.root / ".dvc" / "cache")
    assert checkout_newest(c.prepared) == second["data_version"]


def test_governed_run_publishes_the_decision_and_the_budgets(
    prefect_api: str, home: Path, cohort: Callable[..., Cohort], tmp_path: Path
) -> None:
    from pipelines.governed import governed_run

    c = cohort()
    _ingest(c, 0)
    put_in_force(write_policy(tmp_path))  # the flow enforces the policy in force
    state = governed_run(params=c.params(), return_state=True)
    out = state.result().to_dict()  # the flow returns the RunSummary
    run_id = state.state_details.flow_run_id
    assert out["validation"]["ok"] and out["plan"]["blocks"] == ["2001", "2002"]
    decision = _artifact("gate-decision")
    assert decision is not None and decision.flow_run_id == run_id
    assert decision.type == "markdown"
    assert f"# gate: orch-model version {out['model_version']}" in str(decision.data)
    table = _artifact("block-budgets")
    assert table is not None and table.flow_run_id == run_id and table.type == "table"
    assert '"block": "2001"' in str(table.data) or "2001" in str(table.data)
    assert {"validate", "plan", "reserve", "train", "commit", "evaluate", "track", "gate"} <= set(
        out["timings"]
    )


def test_retraining_uses_only_blocks_with_budget_left_and_records_skips(
    prefect_api: str, home: Path, cohort: Callable[..., Cohort], tmp_path: Path
) -> None:
    """One run spends nearly all of a block's budget (limit 2.2, run ε 2): after the second
    data version arrives, retraining retires the old blocks and trains on the new ones only;
    then nothing is left, and the skip is on record."""
    from dpgov.ledger import Ledger
    from pipelines.retraining import retraining

    c = cohort()
    put_in_force(write_policy(tmp_path, epsilon_per_block=2.2))  # before any charge
    _ingest(c, 0)
    first = retraining(params=c.params(), require_new_data=True)
    assert first["status"] == "trained"
    assert first["run"]["plan"]["blocks"] == ["2001", "2002"]

    again = retraining(params=c.params(), require_new_data=True)
    assert again["status"] == "skipped" and again["reason"].startswith("no new data")

    _ingest(c, 1)
    second = retraining(params=c.params(), require_new_data=True)
    assert second["status"] == "trained", second.get("reason")
    assert [r["block"] for r in second["selection"]["retire"]] == ["2001", "2002"]
    assert second["run"]["plan"]["blocks"] == ["2003", "2004"]

    led = Ledger.open()
    reservations = led.entries("reservation")
    assert [e.payload["blocks"] for e in reservations] == [["2001", "2002"], ["2003", "2004"]]
    assert {e.payload["block"] for e in led.entries("block_retired")} == {"2001", "2002"}

    last = retraining(params=c.params(), require_new_data=False)
    assert last["status"] == "skipped"
    assert "has at least ε 0.5 left" in last["reason"]
    skips = led.entries("retraining_skipped")
    assert [e.payload["reason"][:12] for e in skips] == ["no new data:", "no block of "]
    assert len(led.entries("reservation")) == 2  # skipping never reserves
    assert led.verify().ok


def test_audit_flow_reports_and_publishes(prefect_api: str, home: Path) -> None:
    from dpgov.ledger import Ledger
    from pipelines.audit import audit

    Ledger.open().add_block(dataset="d", block="b", patients=10, data_version=None)
    out = audit()
    assert out["ok"] is True and out["findings"] == []
    art = _artifact("audit-report")
    assert art is not None and "# audit: CLEAN" in str(art.data)


def test_ingest_versions_in_a_repository_with_a_dvc_yaml(
    prefect_api: str, home: Path, cohort: Callable[..., Cohort]
) -> None:
    """A DVC project with pipeline stages (as this one): the arrival and the prepared folder
    are pushed by their .dvc files (a bare folder path would be read as a stage name)."""
    from tests.integration.reliability.helpers import REPO

    c = cohort()
    shutil.copy(REPO / "dvc.yaml", c.root / "dvc.yaml")  # this project's stages and params
    shutil.copy(REPO / "params.yaml", c.root / "params.yaml")
    first = _ingest(c, 0)
    assert set(first["dvc"]["added"]) == {"raw/synth.csv", "prepared/synth"}
    assert first["dvc"]["pushed"] > 0
