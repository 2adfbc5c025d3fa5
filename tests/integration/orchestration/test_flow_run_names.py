"""Prefect flow-run names say what ran: ingest names its dataset; a governed run starts as
``train MODEL on DATASET`` and carries the registered version once it has one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dpgov.testing.policies import put_in_force
from pipelines.run_names import APPROVAL_NAME, model_and_dataset
from tests.integration.orchestration.conftest import Cohort, write_policy


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


def _flow_run_name(state: object) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.read_flow_run(state.state_details.flow_run_id).name)  # type: ignore[attr-defined]


def test_ingest_and_governed_runs_are_named_for_model_version_and_dataset(
    prefect_api: str, home: Path, cohort: Callable[..., Cohort], tmp_path: Path
) -> None:
    from pipelines.governed import governed_run
    from pipelines.ingest import ingest

    c = cohort()
    state = ingest(
        arrival=str(c.arrivals[0]),
        raw=str(c.raw),
        prepared=str(c.prepared),
        repo=str(c.root),
        params=c.params(),
        return_state=True,
    )
    assert _flow_run_name(state) == "ingest into synth"
    put_in_force(write_policy(tmp_path))
    state = governed_run(params=c.params(), return_state=True)
    out = state.result().to_dict()
    assert _flow_run_name(state) == f"train orch-model v{out['model_version']} on synth"


def test_names_from_parameters() -> None:
    assert model_and_dataset(None) == ("dpgov-flchain", "flchain")
    params = {"train": {"model_name": "m", "data": "/x/prepared/cohort"}, "data": {}}
    assert model_and_dataset(params) == ("m", "cohort")
    params["data"] = {"dataset": "other"}
    assert model_and_dataset(params) == ("m", "other")
    assert APPROVAL_NAME.format(model="m", version="3") == "approve m v3"
