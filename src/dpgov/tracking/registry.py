"""MLflow model registry access for the gate: versions, tags, facts, aliases.

Only :mod:`dpgov.tracking` imports mlflow (lazily, inside methods). Releases are registry
aliases (stages are deprecated in MLflow 3); in dpgov only :mod:`dpgov.gate.promotion` moves
them. :class:`Registry` satisfies :class:`dpgov.gate.ports.RegistryPort`. Its reads turn
MLflow's entities into records with the tracking reader's client backend
(:mod:`dpgov.tracking.reader.client`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from dpgov import config
from dpgov.contracts import ARTIFACT_CANDIDATE_FACTS, ARTIFACT_PRIVACY_STATEMENT
from dpgov.errors import UsageError
from dpgov.gate.facts import CandidateFacts
from dpgov.gate.ports import ModelVersionInfo
from dpgov.tracking.digests import file_sha256, tree_sha256
from dpgov.tracking.reader.client import download, version_record
from dpgov.tracking.store import mlflow_client, quiet_progress

FACTS_ARTIFACT = ARTIFACT_CANDIDATE_FACTS


class Registry:
    """The MLflow model registry at ``tracking_uri`` (default: :func:`dpgov.config`'s)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.uri = tracking_uri or config.mlflow_tracking_uri()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = mlflow_client(self.uri)
        return self._client

    # ------------------------------------------------------------------ reading
    def model_version(self, name: str, version: str) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(name, str(version))
        except MlflowException as err:
            if _not_found(err):
                raise UsageError(self._unknown(name, version)) from err
            raise
        record = version_record(mv)
        return ModelVersionInfo(
            name=record.model,
            version=record.version,
            run_id=record.run_id,
            tags=record.tags,
            aliases=tuple(mv.aliases or ()),
            source=record.source,
            run_status=self._run_status(record.run_id) if record.run_id else None,
        )

    def _run_status(self, run_id: str) -> str:
        """The status of the version's run (a killed training process leaves it RUNNING)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_run(run_id).info.status)
        except MlflowException as err:
            if _not_found(err):
                return "MISSING"
            raise

    def _unknown(self, name: str, version: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as err:
            if _not_found(err):
                return f"unknown model {name!r} in the registry at {self.uri}"
            raise
        return f"model {name!r} has no version {version}"

    def candidate_facts(self, name: str, version: str) -> CandidateFacts:
        """The version's run's ``candidate_facts.json``, validated against the contract."""
        from mlflow.exceptions import MlflowException
        from pydantic import ValidationError

        info = self.model_version(name, version)
        where = f"model {name!r} version {version}"
        if info.run_id is None:
            raise UsageError(f"{where} has no run: it was not registered by dpgov")
        with tempfile.TemporaryDirectory(prefix="dpgov-facts-") as tmp:
            try:
                path = download(self.client, info.run_id, FACTS_ARTIFACT, tmp)
            except MlflowException as err:
                raise UsageError(
                    f"{where}: run {info.run_id} has no {FACTS_ARTIFACT} (not registered by "
                    f"dpgov training)"
                ) from err
            try:
                text = Path(path).read_text(encoding="utf-8")
                return CandidateFacts.model_validate_json(text)
            except (OSError, UnicodeDecodeError) as err:
                raise UsageError(f"{where}: cannot read {FACTS_ARTIFACT}: {err}") from err
            except ValidationError as err:
                e = err.errors()[0]
                loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
                raise UsageError(
                    f"{where}: {FACTS_ARTIFACT} does not match the contract: {loc}: {e['msg']}"
                ) from err

    def artifact_digests(self, name: str, version: str) -> dict[str, str | None]:
        """SHA-256 of the version's artifact files as the store holds them now: its run's
        ``candidate_facts.json`` and ``privacy_statement.json`` (None when absent) and its model
        files (:func:`dpgov.tracking.digests.tree_sha256` of the version's source; None when
        the source holds no file)."""
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        info = self.model_version(name, version)
        out: dict[str, str | None] = {}

        def attempt(read: Any) -> str | None:
            """A download that fails on a busy server is tried again (three times in all)
            before the file counts as absent: a transient error must not bind, or judge, a
            missing file."""
            for i in range(3):
                try:
                    return cast("str | None", read(i))
                except (MlflowException, OSError):
                    if i < 2:
                        time.sleep(0.25 * (i + 1))
            return None

        with tempfile.TemporaryDirectory(prefix="dpgov-digests-") as tmp:
            for key, artifact in (
                ("candidate_facts", FACTS_ARTIFACT),
                ("privacy_statement", ARTIFACT_PRIVACY_STATEMENT),
            ):
                out[key] = attempt(
                    lambda i, key=key, artifact=artifact: file_sha256(
                        download(self.client, str(info.run_id), artifact, f"{tmp}/{key}{i}")
                    )
                )
            out["weights"] = None
            if info.source:

                def weights(i: int) -> str | None:
                    location = self._download_location(str(info.source))
                    with quiet_progress():
                        local = mlflow.artifacts.download_artifacts(
                            artifact_uri=location,
                            dst_path=f"{tmp}/weights{i}",
                            tracking_uri=self.uri,
                        )
                    return tree_sha256(Path(local))

                out["weights"] = attempt(weights)
        return out

    def _download_location(self, source: str) -> str:
        """The artifact location behind a version's source, resolved by this registry's own
        client. MLflow resolves a ``models:/`` URI against the process-wide registry URI
        (``mlflow.get_registry_uri()``, in ``ModelsArtifactRepository._get_model_uri_infos``),
        not the tracking URI given to ``download_artifacts``: in a process that had set another
        tracking URI before, the weights were read from that other store, found absent, and the
        gate judged them changed."""
        from urllib.parse import urlparse

        if urlparse(source).scheme != "models":
            return source
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        found = get_model_name_and_version(self.client, source)
        if len(found) == 1:  # models:/<model id>: a logged model
            return str(self.client.get_logged_model(found[0]).artifact_location)
        return str(self.client.get_model_version_download_uri(*found))

    def alias_version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if _not_found(err) or "alias" in str(err).lower():
                self._require_model(name)
                return None
            raise
        return str(mv.version)

    def _require_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as err:
            if _not_found(err):
                raise UsageError(f"unknown model {name!r} in the registry at {self.uri}") from err
            raise

    # ------------------------------------------------------------------ writing
    def set_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``. Call only from :func:`dpgov.gate.promotion.promote`."""
        self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias``. Call only from :func:`dpgov.gate.recall.recall`."""
        self.client.delete_registered_model_alias(name, alias)


def _not_found(err: Any) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def facts_json(facts: CandidateFacts) -> str:
    """The artifact text training writes (kept here so reader and writers agree)."""
    return json.dumps(facts.model_dump(mode="json"), indent=2, sort_keys=True)
