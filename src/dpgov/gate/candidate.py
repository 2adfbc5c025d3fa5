"""The candidate a gate judges: a model version's number, its facts checked against the registry.

Shared by the gate (:mod:`dpgov.gate.service`) and the approvals (:mod:`dpgov.gate.approvals`),
which both start from the version and its ``candidate_facts.json``.
"""

from __future__ import annotations

from typing import Any

from dpgov.contracts import ARTIFACT_CANDIDATE_FACTS, STATUS_REFERENCE, TAG_PRIVATE, TAG_STATUS
from dpgov.errors import UsageError
from dpgov.gate.facts import CandidateFacts
from dpgov.gate.ports import ModelVersionInfo, RegistryPort

TAG_LIMIT = 4000  # characters of one tag value we write (MLflow stores at most 5000)


def parse_version(version: str | int) -> str:
    """A registry version number as MLflow writes it ("3"); UsageError otherwise."""
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1 or len(text) > 12:
        raise UsageError(f"VERSION must be a model version number such as 3, found {version!r}")
    return str(int(text))


def load_candidate(
    registry: RegistryPort, model: str, version: str
) -> tuple[CandidateFacts, ModelVersionInfo]:
    """The version's facts, checked against the registry. Tags that mark the version as the
    non-private reference win over facts that claim otherwise (never promotable)."""
    version = parse_version(version)
    info = registry.model_version(model, version)
    facts = registry.candidate_facts(model, version)
    where = f"model {model!r} version {version}"
    if facts.model_name != model:
        raise UsageError(f"{where}: {ARTIFACT_CANDIDATE_FACTS} names model {facts.model_name!r}")
    if facts.model_version is not None and str(facts.model_version) != version:
        raise UsageError(f"{where}: {ARTIFACT_CANDIDATE_FACTS} names version {facts.model_version}")
    if info.run_id is not None and facts.run_id != info.run_id:
        raise UsageError(
            f"{where}: {ARTIFACT_CANDIDATE_FACTS} names run {facts.run_id}, "
            f"the registry {info.run_id}"
        )
    update: dict[str, Any] = {"model_version": version}
    tags = info.tags
    if tags.get(TAG_STATUS) == STATUS_REFERENCE or tags.get(TAG_PRIVATE, "").lower() == "false":
        update["private"] = False
    return facts.model_copy(update=update), info


def fit(text: str) -> str:
    """Cut a tag value to what MLflow stores."""
    return text if len(text) <= TAG_LIMIT else text[: TAG_LIMIT - 1] + "…"
