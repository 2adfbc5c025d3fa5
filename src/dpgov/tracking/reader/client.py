"""The client backend: any store MLflow's client can reach (a tracking server over HTTP, a
file store, a workspace), read through ``MlflowClient``; and the client's entities turned into
the reader's records (:mod:`dpgov.tracking.records`), for every reader of MLflow in dpgov.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dpgov.tracking.anchor import ANCHOR_EXPERIMENT, AnchorError, anchors
from dpgov.tracking.records import (
    ModelRecord,
    RunRecord,
    StoreRecords,
    VersionRecord,
    first_line,
    millis_iso,
)
from dpgov.tracking.store import mlflow_client, quiet_progress

VIEW_ALL = 3  # mlflow.entities.ViewType.ALL: active and deleted runs and experiments


class StoreUnreadable(Exception):
    """The store's runs or models could not be read (the message says why, in one line)."""


def read(uri: str, client: Any = None) -> tuple[StoreRecords, str | None]:
    """Runs (deleted ones too), registered models with their versions and aliases, and the
    anchors; with why the anchors could not be read (None when they could). Raises
    :class:`StoreUnreadable` when the runs or models cannot be read."""
    out = StoreRecords()
    try:
        client = client if client is not None else mlflow_client(uri)
        experiments = {
            str(e.experiment_id): e
            for e in pages(
                lambda token: client.search_experiments(view_type=VIEW_ALL, page_token=token)
            )
        }
        ids = [i for i, e in experiments.items() if e.name != ANCHOR_EXPERIMENT]
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            for run in pages(
                lambda token, chunk=chunk: client.search_runs(
                    chunk, run_view_type=VIEW_ALL, max_results=1000, page_token=token
                )
            ):
                out.runs.append(run_record(run, experiments.get(str(run.info.experiment_id))))
        for rm in pages(
            lambda token: client.search_registered_models(max_results=100, page_token=token)
        ):
            out.models.append(model_record(client, rm))
    except Exception as err:  # unreadable store: the caller reports it
        raise StoreUnreadable(f"tracking store {uri} is unreadable: {first_line(err)}") from err
    try:
        out.anchors = anchors(tracking_uri=uri)
    except AnchorError as err:
        return out, str(err)
    return out, None


def pages(call: Callable[..., Any]) -> Iterator[Any]:
    """Every item of a paged MLflow search (``call(page_token)`` returns one page)."""
    token = None
    while True:
        page = call(token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def run_record(run: Any, experiment: Any = None) -> RunRecord:
    """A client ``Run`` as a record; ``experiment`` (the client's) names it and marks it
    deleted with its experiment."""
    info, data = run.info, run.data
    return RunRecord(
        run_id=str(info.run_id),
        experiment_id=str(info.experiment_id),
        experiment=str(experiment.name) if experiment is not None else "",
        name=str(info.run_name or ""),
        status=str(info.status),
        deleted=info.lifecycle_stage == "deleted"
        or (experiment is not None and experiment.lifecycle_stage == "deleted"),
        start_time=millis_iso(info.start_time) or "",
        end_time=millis_iso(info.end_time),
        tags=dict(data.tags),
        params=dict(data.params),
        metrics={k: float(v) for k, v in data.metrics.items()},
    )


def version_record(mv: Any, model: str | None = None) -> VersionRecord:
    """A client ``ModelVersion`` as a record (of ``model``, default: the one it names)."""
    return VersionRecord(
        model=str(mv.name) if model is None else model,
        version=str(mv.version),
        run_id=mv.run_id or None,
        tags=dict(mv.tags or {}),
        source=mv.source,
        created=millis_iso(mv.creation_timestamp) or "",
    )


def model_record(client: Any, rm: Any) -> ModelRecord:
    """A client ``RegisteredModel`` as a record, with every version the client lists."""
    name = str(rm.name)
    aliases = rm.aliases or {}
    if not isinstance(aliases, dict):  # older clients give a list of alias objects
        aliases = {a.alias: a.version for a in aliases}
    escaped = name.replace("'", "\\'")
    versions = {}
    for mv in pages(
        lambda token: client.search_model_versions(f"name='{escaped}'", page_token=token)
    ):
        record = version_record(mv, name)
        versions[record.version] = record
    return ModelRecord(
        name=name,
        aliases={str(k): str(v) for k, v in aliases.items()},
        tags=dict(rm.tags or {}),
        versions=versions,
    )


def download(client: Any, run_id: str, name: str, folder: str) -> Path:
    """One artifact of a run, downloaded into ``folder``, without a progress bar."""
    with quiet_progress():
        return Path(client.download_artifacts(run_id, name, folder))
