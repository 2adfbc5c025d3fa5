"""One reader of the tracking store, two backends, the same records.

:func:`snapshot` reads everything the audit judges (runs, deleted ones too; registered models
with their versions and aliases; ledger anchors; the artifacts of every released version) as
the typed records of :mod:`dpgov.tracking.records`. The backend is chosen here, and only here
(:func:`snapshot`):

- :mod:`~dpgov.tracking.reader.sql` reads a SQL store's tables directly (SQLite, PostgreSQL,
  MySQL: fast, no MLflow import) when the store is exactly what it knows;
- :mod:`~dpgov.tracking.reader.client` reads any other store through MLflow's client, and
  turns the client's entities into records for every other reader
  (:mod:`dpgov.tracking.runs`, :mod:`dpgov.tracking.registry`).

Reading is defensive: a store that cannot be read gives a snapshot with ``error`` set (the
audit reports it and runs its other checks), never an exception.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Literal

from dpgov import config
from dpgov.tracking.reader import artifacts, client, sql
from dpgov.tracking.records import StoreRecords, TrackingSnapshot

__all__ = ["Backend", "read_records", "snapshot"]

Backend = Literal["auto", "sql", "client"]


def snapshot(
    uri: str | None = None, *, release_artifacts: bool = True, backend: Backend = "auto"
) -> TrackingSnapshot:
    """Anchors, every run (deleted ones too), every registered model with its versions and
    aliases, and the facts and privacy statement of every version holding an alias.

    ``backend``: ``auto`` (the SQL backend where it can read the store, else the client),
    or one of them by name (``sql`` raises :class:`~dpgov.tracking.reader.sql.NotReadable`
    on a store it cannot read)."""
    uri = uri or config.mlflow_tracking_uri()
    snap = TrackingSnapshot(uri=uri)
    problem = sqlite_store_problem(uri)
    if problem is not None:
        snap.error = problem
        return snap
    quiet_client_defaults()
    try:
        records, snap.anchors_error = read_records(uri, backend=backend)
    except client.StoreUnreadable as err:  # a finding, and the ledger checks still run
        snap.error = str(err)
        return snap
    snap.runs, snap.models, snap.anchors = records.runs, records.models, records.anchors
    if release_artifacts:
        snap.artifacts = artifacts.release_artifacts(uri, snap.models, records.artifact_uris)
    return snap


def read_records(uri: str, *, backend: Backend = "auto") -> tuple[StoreRecords, str | None]:
    """The store's records from the SQL backend where it can read the store (``auto``), else
    from the client backend; with why the anchors could not be read (None when they could)."""
    if backend != "client":
        try:
            return sql.read(uri), None
        except sql.NotReadable:
            if backend == "sql":
                raise
    return client.read(uri)


def quiet_client_defaults() -> None:
    """A read must not hang minutes on a tracking server that does not answer."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


def sqlite_store_problem(uri: str) -> str | None:
    """Why a sqlite tracking URI cannot be read (it must exist and hold MLflow's tables;
    MLflow would otherwise create an empty store), or None."""
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
    if path is None or path in ("", ":memory:"):
        return None
    if not Path(path).is_file():
        return f"tracking store {uri} does not exist"
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return f"tracking store {uri} is not a SQLite database"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
    except (OSError, sqlite3.DatabaseError) as err:
        return f"tracking store {uri} is unreadable: {err}"
    if "runs" not in tables or "experiments" not in tables:
        return f"tracking store {uri} holds no MLflow tables"
    return None
