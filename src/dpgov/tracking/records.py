"""What a read of the tracking store returns: typed records, the same from every backend.

:mod:`dpgov.tracking.reader` fills them from MLflow's tables (SQL backend) or through MLflow's
client (client backend); the audit and the gate's readers consume them. Times are ISO 8601,
UTC, to the millisecond (:func:`millis_iso`), as MLflow stores them in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class RunRecord:
    """One MLflow run: its latest metrics, parameters and tags; ``deleted`` when the run or
    its experiment was deleted."""

    run_id: str
    experiment_id: str
    experiment: str
    name: str
    status: str
    deleted: bool
    start_time: str
    end_time: str | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class VersionRecord:
    """One live registered model version (MLflow's deleted versions are left out)."""

    model: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    source: str | None
    created: str


@dataclass
class ModelRecord:
    """One registered model with its live versions and aliases (alias → version)."""

    name: str
    aliases: dict[str, str]
    tags: dict[str, str]
    versions: dict[str, VersionRecord]


@dataclass(frozen=True)
class Anchor:
    """One recorded chain head (:mod:`dpgov.tracking.anchor`); ``deleted`` when its run or the
    experiment was deleted."""

    seq: int
    hash: str
    time: str  # ISO 8601, UTC: when the anchor was recorded ("" if unknown)
    run_id: str
    ledger: str | None = None
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "run_id": self.run_id,
            "ledger": self.ledger,
            "deleted": self.deleted,
        }


@dataclass
class ReleaseArtifacts:
    """The candidate facts and logged privacy statement of a release's run (JSON objects as
    training wrote them), and why either could not be read."""

    facts: dict[str, Any] | None = None
    statement: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class StoreRecords:
    """What one backend reads from a store: runs (but anchor runs), models, anchors, and the
    artifact location of each run where the backend knows it (run id → artifact URI)."""

    runs: list[RunRecord] = field(default_factory=list)
    models: list[ModelRecord] = field(default_factory=list)
    anchors: list[Anchor] = field(default_factory=list)
    artifact_uris: dict[str, str] = field(default_factory=dict)


@dataclass
class TrackingSnapshot:
    """The tracking store as the audit reads it. ``error``: the store could not be read at
    all; ``anchors_error``: only the anchors could not."""

    uri: str
    error: str | None = None
    anchors: list[Anchor] = field(default_factory=list)
    anchors_error: str | None = None
    runs: list[RunRecord] = field(default_factory=list)
    models: list[ModelRecord] = field(default_factory=list)
    artifacts: dict[tuple[str, str], ReleaseArtifacts] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.error is None


def millis_iso(millis: int | None) -> str | None:
    """An MLflow time (milliseconds since the epoch) as ISO 8601 UTC; None for none."""
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


def first_line(err: BaseException) -> str:
    """An error's first line (its class name when it says nothing), for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
