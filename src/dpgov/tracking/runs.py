"""MLflow runs: parameters, metrics, tags, the model, the privacy statement, candidate facts.

Training's writer (only :mod:`dpgov.tracking` imports mlflow). The store is SQLite at
``$DPGOV_HOME/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` names another; with a local store,
artifacts live under ``$DPGOV_HOME/mlartifacts``. Its reads (:func:`read_run`,
:func:`read_model_version`) turn MLflow's entities into records with the tracking reader's
client backend (:mod:`dpgov.tracking.reader.client`), as the audit's reads do.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

from dpgov import config
from dpgov.contracts import ARTIFACT_CANDIDATE_FACTS, TAG_DATASET, TAG_FAILURE
from dpgov.redaction import redact
from dpgov.tracking import conventions
from dpgov.tracking.reader.client import run_record, version_record
from dpgov.tracking.store import experiment_location

CANDIDATE_FACTS = ARTIFACT_CANDIDATE_FACTS
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str
    model_uri: str


def _mlflow() -> Any:
    """mlflow, pointed at the configured store, with its chatter kept to warnings."""
    import mlflow

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(config.mlflow_tracking_uri())
    return mlflow


def experiment_id(name: str, *, dataset: str | None = None) -> str:
    """The id of experiment ``name`` (``{dataset}`` in it replaced by ``dataset``), created on
    first use (artifacts under the home folder locally), tagged as classic ML so MLflow's UI
    opens on its runs (:mod:`dpgov.tracking.conventions`)."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    resolved = conventions.experiment_name(name, dataset)
    found = client.get_experiment_by_name(resolved)
    if found is not None:
        if conventions.EXPERIMENT_KIND_TAG not in (found.tags or {}):  # made before the tag
            client.set_experiment_tag(
                found.experiment_id, conventions.EXPERIMENT_KIND_TAG, conventions.CLASSIC_ML
            )
        return str(found.experiment_id)
    location = experiment_location(config.mlflow_tracking_uri(), resolved)
    tags = conventions.experiment_tags(name, resolved, dataset)
    try:
        return str(client.create_experiment(resolved, artifact_location=location, tags=tags))
    except Exception:  # created by a concurrent run meanwhile
        again = client.get_experiment_by_name(resolved)
        if again is None:
            raise
        return str(again.experiment_id)


def start_run(
    *,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> str:
    """Create a run (status RUNNING) with its parameters and tags; returns the run id.

    The run lands in the experiment of its dataset (``experiment`` with ``{dataset}`` replaced
    by the ``dpgov.dataset`` tag); its name gets the dataset, blocks and target ε, its
    description says what ran, and its data version is logged as its input dataset.
    ``parent_run_id`` nests the run under another (MLflow's ``mlflow.parentRunId`` tag, what
    ``mlflow.start_run(nested=True)`` sets), for example a sweep's trials under the sweep.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    tags = {conventions.NOTE_TAG: conventions.run_description(tags, params), **tags}
    if parent_run_id is not None:
        tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_run_id}
    run = client.create_run(
        experiment_id(experiment, dataset=tags.get(TAG_DATASET)),
        run_name=conventions.run_title(run_name, tags, params),
        tags=tags,
    )
    run_id = str(run.info.run_id)
    log_params(run_id, params)
    data_input = conventions.dvc_input(tags)
    if data_input is not None:
        client.log_inputs(run_id, datasets=[data_input])
    return run_id


def log_params(run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    client = _mlflow().MlflowClient()
    batch = [Param(str(k), _param_value(v)) for k, v in params.items()]
    for start in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[start : start + 100])


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def log_metrics(run_id: str, metrics: dict[str, float], *, step: int = 0) -> None:
    import math
    import time

    from mlflow.entities import Metric

    client = _mlflow().MlflowClient()
    now = int(time.time() * 1000)
    batch = [
        Metric(str(k), float(v), now, step)
        for k, v in metrics.items()
        if v is not None and math.isfinite(float(v))
    ]
    for start in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[start : start + 500])


def log_series(run_id: str, key: str, values: list[float]) -> None:
    """One metric over steps 1..n (for example the loss per epoch)."""
    for step, value in enumerate(values, start=1):
        log_metrics(run_id, {key: value}, step=step)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = _mlflow().MlflowClient()
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))


def log_text(run_id: str, text: str, name: str) -> None:
    _mlflow().MlflowClient().log_text(run_id, text, name)


def log_json(run_id: str, data: Any, name: str) -> None:
    _mlflow().MlflowClient().log_dict(run_id, data, name)


def log_model(
    run_id: str,
    model: Any,
    *,
    input_example: Any,
    register_as: str | None = None,
    version_tags: dict[str, str] | None = None,
) -> ModelVersionRef | None:
    """Log a torch module (pt2 export, loadable without dpgov) and register it as a version."""
    import torch

    mlflow = _mlflow()
    torch_version = torch.__version__.split("+", 1)[0]
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pytorch.log_model(
            model,
            name=MODEL_ARTIFACT,
            input_example=input_example,
            pip_requirements=[f"torch=={torch_version}"],
        )
    # Leaving start_run() marked the run FINISHED; tracking is not done (facts, registration):
    # the caller's end_run() finishes it, and a process killed before that leaves it RUNNING.
    mlflow.MlflowClient().update_run(run_id, status="RUNNING")
    if register_as is None:
        return None
    with contextlib.redirect_stderr(io.StringIO()):  # "Successfully registered model ..."
        version = mlflow.register_model(
            info.model_uri,
            register_as,
            tags={k: str(v) for k, v in (version_tags or {}).items()},
        )
    return ModelVersionRef(
        name=register_as,
        version=str(version.version),
        run_id=run_id,
        model_uri=f"models:/{register_as}/{version.version}",
    )


def end_run(run_id: str, *, failed: bool = False, reason: str | None = None) -> None:
    client = _mlflow().MlflowClient()
    if reason:
        client.set_tag(run_id, TAG_FAILURE, redact(reason)[:4000])
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def read_run(run_id: str) -> dict[str, Any]:
    """Parameters, metrics, tags and top-level artifact paths of a run, from the store."""
    client = _mlflow().MlflowClient()
    run = client.get_run(run_id)
    record = run_record(run)
    return {
        "run_id": run_id,
        "status": record.status,
        "experiment_id": record.experiment_id,
        "artifact_uri": run.info.artifact_uri,
        "params": record.params,
        "metrics": record.metrics,
        "tags": record.tags,
        "artifacts": sorted(a.path for a in client.list_artifacts(run_id)),
    }


def find_runs(experiment: str, tag: str, value: str) -> list[dict[str, Any]]:
    """Runs of ``experiment`` whose tag ``tag`` equals ``value`` (for example a reservation)."""
    client = _mlflow().MlflowClient()
    if conventions.DATASET_FIELD in experiment:  # one experiment per dataset: search them all
        pattern = experiment.replace("'", "\\'")
        ids = [
            e.experiment_id
            for e in client.search_experiments(
                filter_string=f"tags.`{conventions.TAG_EXPERIMENT_TEMPLATE}` = '{pattern}'"
            )
        ]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [] if found is None else [found.experiment_id]
    if not ids:
        return []
    escaped = value.replace("'", "\\'")
    hits = client.search_runs(ids, f"tags.`{tag}` = '{escaped}'")
    return [read_run(r.info.run_id) for r in hits]


def read_json(run_id: str, name: str) -> Any:
    """A JSON artifact of a run (for example ``candidate_facts.json``)."""
    import mlflow.artifacts

    _mlflow()
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")


def read_model_version(name: str, version: str) -> dict[str, Any]:
    record = version_record(_mlflow().MlflowClient().get_model_version(name, version), name)
    return {
        "name": name,
        "version": record.version,
        "run_id": record.run_id,
        "source": record.source,
        "tags": record.tags,
    }


def load_model(model_uri: str) -> Any:
    return _mlflow().pytorch.load_model(model_uri)
