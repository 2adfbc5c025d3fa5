"""Prefect flow-run names that say what ran: the model, its version and the dataset.

A training flow is named when it starts from its parameters (``train dpgov-flchain on flchain``:
the version is not known yet) and renamed once the model version is registered
(``train dpgov-flchain v3 on flchain``). The approval flow's name carries the model and version
it waits for (``approve dpgov-flchain v3``); ingest names its dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

APPROVAL_NAME = "approve {model} v{version}"
VERBS = {"governed-run": "train", "retraining": "retrain", "demo": "demo", "demo-waves": "demo"}
DEFAULT_MODEL = "dpgov-flchain"


def model_and_dataset(params: dict[str, Any] | None) -> tuple[str, str]:
    """The model name and dataset a params mapping (shaped like params.yaml) trains."""
    params = params or {}
    train = params.get("train") or {}
    data = params.get("data") or {}
    model = str(train.get("model_name") or DEFAULT_MODEL)
    dataset = data.get("dataset") or (Path(str(train["data"])).name if train.get("data") else "")
    return model, str(dataset or "flchain")


def _current() -> tuple[str, dict[str, Any]]:
    from prefect.runtime import flow_run

    return str(flow_run.flow_name or ""), dict(flow_run.parameters or {})


def training_name() -> str:
    """The name of a governed-run, retraining or demo flow run, from its parameters."""
    flow, parameters = _current()
    model, dataset = model_and_dataset(parameters.get("params"))
    if flow.startswith("demo") and not parameters.get("params"):
        model, dataset = DEFAULT_MODEL, "flchain"
    return f"{VERBS.get(flow, flow)} {model} on {dataset}"


def ingest_name() -> str:
    _, parameters = _current()
    prepared = parameters.get("prepared")
    return f"ingest into {Path(str(prepared)).name}" if prepared else "ingest"


def name_with_version(model: str, version: str | None, dataset: str) -> None:
    """Rename the current flow run to carry the registered model version (no-op outside a
    flow run or without a version; a failure to rename is logged, never raised)."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id or version is None:
        return
    verb = VERBS.get(str(flow_run.flow_name or ""), str(flow_run.flow_name or "run"))
    name = f"{verb} {model} v{version} on {dataset}"
    try:
        from uuid import UUID

        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id=UUID(str(run_id)), name=name)
    except Exception as err:  # the name is a convenience: never fail a run over it
        log.warning("could not rename flow run %s to %r: %s", run_id, name, err)
