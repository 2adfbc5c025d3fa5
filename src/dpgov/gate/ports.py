"""What the gate needs from the model registry, as a protocol.

The gate sits below tracking (tracking → gate), so it never imports mlflow or
:mod:`dpgov.tracking`; the command line hands it :class:`dpgov.tracking.registry.Registry`,
which satisfies :class:`RegistryPort`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dpgov.gate.facts import CandidateFacts


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    source: str | None = None
    run_status: str | None = None  # FINISHED, RUNNING, FAILED, KILLED; MISSING: no such run


class RegistryPort(Protocol):
    def model_version(self, name: str, version: str) -> ModelVersionInfo:
        """The model version; UsageError when the model or version is unknown."""
        ...

    def candidate_facts(self, name: str, version: str) -> CandidateFacts:
        """The ``candidate_facts.json`` of the version's run; UsageError when absent/invalid."""
        ...

    def set_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None: ...

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version the alias points at, or None when the alias is not set."""
        ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def delete_alias(self, name: str, alias: str) -> None: ...

    def artifact_digests(self, name: str, version: str) -> dict[str, str | None]:
        """SHA-256 of the version's ``candidate_facts``, ``privacy_statement`` and ``weights``
        (the model files) as the store holds them now; None for what is absent."""
        ...
