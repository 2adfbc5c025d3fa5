"""MLflow for sweeps: a parent run per sweep, its trials (and the reference) as child runs.

A child is an ordinary governed run opened with ``parent_run_id`` (MLflow's
``mlflow.parentRunId`` tag, as ``mlflow.start_run(nested=True)`` sets it) and tagged with the
sweep's id. The parent holds the sweep's parameters, its composed cost, and the table and
plot as artifacts under ``sweep/``. Sweep runs register no model versions: they are studies,
not release candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpgov.contracts import (
    STATUS_STUDY,
    TAG_FAILURE,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_ROLE,
    TAG_SWEEP_STOPPED,
)
from dpgov.redaction import redact
from dpgov.tracking import runs

SWEEP_TAG = TAG_SWEEP
TRIAL_TAG = TAG_SWEEP_ROLE
ARTIFACT_DIR = "sweep"
STATUSES = ("FINISHED", "FAILED", "KILLED")


def start_sweep(
    *, experiment: str, sweep_id: str, params: dict[str, Any], tags: dict[str, str]
) -> str:
    """Open the sweep's parent run (RUNNING); returns its run id."""
    return runs.start_run(
        experiment=experiment,
        run_name=f"sweep-{sweep_id}",
        params=params,
        tags={**tags, SWEEP_TAG: sweep_id, TRIAL_TAG: "parent"},
    )


def child_tags(sweep_id: str, trial: int | None) -> dict[str, str]:
    """Tags of a sweep's child run: a numbered trial (status ``study``) or the reference."""
    if trial is None:
        return {SWEEP_TAG: sweep_id, TRIAL_TAG: "reference"}
    return {SWEEP_TAG: sweep_id, TRIAL_TAG: str(trial), TAG_STATUS: STATUS_STUDY}


def log_sweep(run_id: str, *, files: list[Path], metrics: dict[str, float]) -> None:
    """The sweep's metrics and its files (table, plot, JSON) as artifacts under ``sweep/``."""
    client = runs._mlflow().MlflowClient()
    runs.log_metrics(run_id, metrics)
    for path in files:
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)


def end_sweep(run_id: str, *, status: str = "FINISHED", reason: str | None = None) -> None:
    """Close the parent: FINISHED, FAILED (an error) or KILLED (stopped by a refusal)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, found {status!r}")
    client = runs._mlflow().MlflowClient()
    if reason:
        client.set_tag(
            run_id, TAG_SWEEP_STOPPED if status == "KILLED" else TAG_FAILURE, redact(reason)[:4000]
        )
    client.set_terminated(run_id, status=status)


def children(parent_run_id: str) -> list[dict[str, Any]]:
    """The child runs of a parent (trials and reference), as :func:`runs.read_run` dicts."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = runs._mlflow().MlflowClient()
    parent = client.get_run(parent_run_id)
    found = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
        max_results=10_000,
    )
    return [runs.read_run(r.info.run_id) for r in found]


def find_sweep(sweep_id: str, experiment: str) -> dict[str, Any] | None:
    """The parent run of a sweep, by its id, or None."""
    hits = [
        r
        for r in runs.find_runs(experiment, SWEEP_TAG, sweep_id)
        if r["tags"].get(TRIAL_TAG) == "parent"
    ]
    return hits[0] if hits else None
