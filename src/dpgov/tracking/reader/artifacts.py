"""The artifacts of released versions: candidate facts and the logged privacy statement.

Read from the run's artifact folder where it is on this machine (a path or ``file:`` URI the
backend found), else downloaded through MLflow's client.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from dpgov.contracts import ARTIFACT_CANDIDATE_FACTS, ARTIFACT_PRIVACY_STATEMENT
from dpgov.tracking.reader.client import download
from dpgov.tracking.records import ModelRecord, ReleaseArtifacts, first_line
from dpgov.tracking.store import mlflow_client

RELEASE_FILES = (ARTIFACT_CANDIDATE_FACTS, ARTIFACT_PRIVACY_STATEMENT)


def release_artifacts(
    uri: str,
    models: list[ModelRecord],
    artifact_uris: dict[str, str],
    client: Any = None,
) -> dict[tuple[str, str], ReleaseArtifacts]:
    """The facts and statement of every version holding an alias, by (model, version)."""
    out: dict[tuple[str, str], ReleaseArtifacts] = {}
    for m in models:
        for version in sorted(set(m.aliases.values()), key=version_order):
            run_id = m.versions[version].run_id if version in m.versions else None
            folder = local_artifact_dir(artifact_uris.get(run_id or "", ""))
            if run_id is not None and folder is not None:
                out[(m.name, version)] = _local(Path(folder), run_id)
                continue
            if client is None:
                client = mlflow_client(uri)
            out[(m.name, version)] = _downloaded(client, run_id)
    return out


def local_artifact_dir(artifact_uri: str) -> str | None:
    """The folder of a run's artifacts when it is on this machine (a path or ``file:``)."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return artifact_uri
    return None


def version_order(v: str) -> tuple[int, str]:
    """Model versions in number order (non-numbers last)."""
    return (int(v), v) if v.isdigit() else (1 << 62, v)


def _local(folder: Path, run_id: str) -> ReleaseArtifacts:
    return _release_files(run_id, lambda name: folder / name)


def _downloaded(client: Any, run_id: str | None) -> ReleaseArtifacts:
    if run_id is None:
        return ReleaseArtifacts(problems=["the version names no run"])
    with tempfile.TemporaryDirectory(prefix="dpgov-audit-") as tmp:
        return _release_files(run_id, lambda name: download(client, run_id, name, tmp))


def _release_files(run_id: str, fetch: Callable[[str], Path]) -> ReleaseArtifacts:
    """The facts and statement of a release's run, each file found by ``fetch(name)``."""
    out = ReleaseArtifacts()
    for name in RELEASE_FILES:
        try:
            data = json.loads(fetch(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            out.problems.append(f"{name} of run {run_id}: not among its artifacts")
            continue
        except Exception as err:  # a download or a parse failure: a problem of the release
            out.problems.append(f"{name} of run {run_id}: {first_line(err)}")
            continue
        if name == ARTIFACT_CANDIDATE_FACTS:
            out.facts = data if isinstance(data, dict) else None
        else:
            out.statement = data if isinstance(data, dict) else None
    return out
