"""Reaching the MLflow tracking store: one client, one rule for where local artifacts go.

Every module of :mod:`dpgov.tracking` that talks to MLflow gets its client here. mlflow is
imported inside the functions (it is slow to import).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dpgov import config


def mlflow_client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` for tracking and registry at ``uri`` (default: the configured
    store), with MLflow's chatter kept to warnings."""
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    where = uri or config.mlflow_tracking_uri()
    return MlflowClient(tracking_uri=where, registry_uri=where)


def local_store(uri: str) -> bool:
    """A store on this machine (SQLite, a file store or a path)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def experiment_location(uri: str, name: str) -> str | None:
    """Where a new experiment's artifacts go: under the home folder for a local store
    (created here), the server's default otherwise (None)."""
    if not local_store(uri):
        return None
    root = config.mlflow_artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    return (root / name).as_uri()


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No download progress bar (it would clutter a command's output)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
