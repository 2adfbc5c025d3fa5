"""Gathering what the audit judges: the ledger as stored, the tracking store, DVC.

Everything here reads; the checks in :mod:`dpgov.report.audit` are pure functions of what it
returns. Reading is defensive: a ledger that does not answer is unusable input (exit 2), but an
unreadable tracking store, a corrupted row or an unreadable projection becomes a finding, so the
rest of the audit still runs.

MLflow is reached through the client of :class:`dpgov.tracking.registry.Registry` and
:mod:`dpgov.tracking.anchor` (only :mod:`dpgov.tracking` imports mlflow).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgov.errors import LedgerUnavailable, UsageError
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import RawEntry

if TYPE_CHECKING:
    from dpgov.ledger import Ledger, Verification
    from dpgov.policy.schema import Budget
    from dpgov.tracking.anchor import Anchor

VIEW_ALL = 3  # mlflow.entities.ViewType.ALL: active and deleted runs and experiments
FACTS_ARTIFACT = "candidate_facts.json"
STATEMENT_ARTIFACT = "privacy_statement.json"


# ------------------------------------------------------------------------------------ ledger


@dataclass
class ProjectedReservation:
    id: str
    dataset: str
    status: str
    mechanism: dict[str, Any] | None  # None: the stored text is unreadable
    planned_steps: int
    run_id: str | None
    seq: int
    closed_seq: int | None
    blocks: list[str]


@dataclass
class LedgerSnapshot:
    """The ledger as stored: entry rows, their verification, and the projections."""

    url: str
    rows: list[RawEntry]
    verification: Verification
    hmac_key_set: bool
    blocks: dict[tuple[str, str], dict[str, Any]] | None = None
    reservations: dict[str, ProjectedReservation] | None = None
    budget: dict[tuple[str, str], float] | None = None  # the ledger's ε (projection + cache)
    problems: list[Finding] = field(default_factory=list)


def shown_url(url: str) -> str:
    import sqlalchemy as sa

    try:
        return str(sa.make_url(url).render_as_string(hide_password=True))
    except sa.exc.ArgumentError:
        return url


def open_ledger(url: str | None = None) -> Ledger:
    """Open an existing ledger; never create one (an audit of nothing is bad input)."""
    import sqlalchemy as sa

    from dpgov import config
    from dpgov.ledger import Ledger

    url = url or config.ledger_url()
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as err:
        raise UsageError(f"ledger URL {url!r} is malformed") from err
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if not db or db == ":memory:" or not Path(db).is_file():
            raise LedgerUnavailable(
                f"ledger database {shown_url(url)} does not exist: nothing to audit (set "
                f"DPGOV_LEDGER_URL or DPGOV_HOME to the ledger's)"
            )
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                tables = {
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
        except sqlite3.DatabaseError as err:
            raise LedgerUnavailable(
                f"ledger database {shown_url(url)} is unreadable: {err}"
            ) from err
        if "dpgov_entries" not in tables:
            raise LedgerUnavailable(
                f"{shown_url(url)} holds no dpgov ledger (no dpgov_entries table)"
            )
    return Ledger.open(url)


def snapshot_ledger(
    ledger: Ledger,
    budget: Budget,
    *,
    on_rows: Callable[[list[RawEntry]], None] | None = None,
) -> LedgerSnapshot:
    """Read every entry row, verify the chain over exactly those rows, read the projections.
    ``on_rows`` is called with the rows before the (slower) projections are read."""
    import sqlalchemy as sa

    from dpgov.ledger.chain import hmac_key, verify_chain
    from dpgov.ledger.store import entries_t

    c = entries_t.c
    try:
        with ledger.engine.connect() as conn:
            rows = [
                tuple(r)
                for r in conn.execute(
                    sa.select(
                        c.seq, c.kind, c.payload, c.time, c.actor, c.prev_hash, c.hash, c.signature
                    ).order_by(c.seq)
                )
            ]
    except sa.exc.SQLAlchemyError as err:
        raise LedgerUnavailable(
            f"ledger database {shown_url(str(ledger.engine.url))}: cannot read its entries: "
            f"{_first_line(err)}"
        ) from err
    key = hmac_key()
    snap = LedgerSnapshot(
        url=ledger.engine.url.render_as_string(hide_password=True),
        rows=[RawEntry.from_row(r) for r in rows],
        verification=verify_chain(iter(rows), key),  # type: ignore[arg-type]
        hmac_key_set=key is not None,
    )
    if on_rows is not None:
        on_rows(snap.rows)
    _read_projections(ledger, snap)
    try:
        snap.budget = {(s.dataset, s.block): s.epsilon_spent for s in ledger.budget(budget)}
    except Exception as err:  # a corrupted projection or cache: report, never trust
        snap.problems.append(
            finding(
                "projection_unreadable",
                f"the ledger cannot compute its own budget figures: {_first_line(err)}",
            )
        )
    return snap


def _read_projections(ledger: Ledger, snap: LedgerSnapshot) -> None:
    import sqlalchemy as sa

    from dpgov.ledger.store import blocks_t, charges_t, reservations_t

    try:
        with ledger.engine.connect() as conn:
            blocks = conn.execute(sa.select(blocks_t)).all()
            reservations = conn.execute(sa.select(reservations_t)).all()
            charges = conn.execute(sa.select(charges_t)).all()
    except sa.exc.SQLAlchemyError as err:
        snap.problems.append(
            finding(
                "projection_unreadable",
                f"cannot read the ledger's projection tables: {_first_line(err)}",
            )
        )
        return
    snap.blocks = {
        (str(b.dataset), str(b.block)): {
            "patients": b.patients,
            "retired": bool(b.retired),
            "data_version": b.data_version,
            "seq": b.seq,
        }
        for b in blocks
    }
    per: dict[str, list[str]] = {}
    for ch in charges:
        per.setdefault(str(ch.reservation_id), []).append(str(ch.block))
    out = {}
    for r in reservations:
        try:
            mech = json.loads(r.mechanism)
            mech = mech if isinstance(mech, dict) else None
        except (TypeError, ValueError):
            mech = None
        out[str(r.id)] = ProjectedReservation(
            id=str(r.id),
            dataset=str(r.dataset),
            status=str(r.status),
            mechanism=mech,
            planned_steps=int(r.planned_steps),
            run_id=r.run_id,
            seq=int(r.seq),
            closed_seq=r.closed_seq,
            blocks=sorted(per.get(str(r.id), [])),
        )
    snap.reservations = out


# ---------------------------------------------------------------------------------- tracking


@dataclass
class RunRecord:
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
    model: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    source: str | None
    created: str


@dataclass
class ModelRecord:
    name: str
    aliases: dict[str, str]  # alias → version
    tags: dict[str, str]
    versions: dict[str, VersionRecord]


@dataclass
class ReleaseArtifacts:
    facts: dict[str, Any] | None = None
    statement: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class TrackingSnapshot:
    uri: str
    error: str | None = None  # the store could not be read at all
    anchors: list[Anchor] = field(default_factory=list)
    anchors_error: str | None = None
    runs: list[RunRecord] = field(default_factory=list)
    models: list[ModelRecord] = field(default_factory=list)
    artifacts: dict[tuple[str, str], ReleaseArtifacts] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.error is None


def quiet_mlflow_client_defaults() -> None:
    """An audit must not hang minutes on a tracking server that does not answer."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


def _sqlite_store_problem(uri: str) -> str | None:
    """Why a sqlite tracking URI cannot be audited (it must exist and hold MLflow's tables;
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


def snapshot_tracking(
    uri: str | None = None, *, release_artifacts: bool = True
) -> TrackingSnapshot:
    """Anchors, every run (deleted ones too), every registered model with its versions and
    aliases, and the facts and privacy statement of every version holding an alias."""
    from dpgov import config

    uri = uri or config.mlflow_tracking_uri()
    snap = TrackingSnapshot(uri=uri)
    problem = _sqlite_store_problem(uri)
    if problem is not None:
        snap.error = problem
        return snap
    quiet_mlflow_client_defaults()
    from dpgov.report import mlflow_tables

    try:  # the fast path: a SQL store's tables, read directly (see mlflow_tables)
        tables = mlflow_tables.read(uri)
    except mlflow_tables.NotReadable:
        pass
    else:
        snap.runs, snap.models, snap.anchors = tables.runs, tables.models, tables.anchors
        if release_artifacts:
            _release_artifacts(snap, uri, tables.artifact_uris)
        return snap
    return _snapshot_with_client(snap, uri, release_artifacts=release_artifacts)


def _release_artifacts(snap: TrackingSnapshot, uri: str, artifact_uris: dict[str, str]) -> None:
    """The facts and statement of every version holding an alias: read from the run's
    artifact folder where it is on this machine, else downloaded through MLflow's client."""
    from dpgov.report.mlflow_tables import local_artifact_dir

    client = None
    for m in snap.models:
        for version in sorted(set(m.aliases.values()), key=_version_key):
            run_id = m.versions[version].run_id if version in m.versions else None
            folder = local_artifact_dir(artifact_uris.get(run_id or "", ""))
            if run_id is not None and folder is not None:
                snap.artifacts[(m.name, version)] = _local_artifacts(Path(folder), run_id)
                continue
            if client is None:
                from dpgov.tracking.registry import Registry

                client = Registry(uri).client
            snap.artifacts[(m.name, version)] = _artifacts(client, run_id)


def _local_artifacts(folder: Path, run_id: str) -> ReleaseArtifacts:
    return _release_files(run_id, lambda name: folder / name)


def _snapshot_with_client(
    snap: TrackingSnapshot, uri: str, *, release_artifacts: bool
) -> TrackingSnapshot:
    """The snapshot read through MLflow's client (any store MLflow can reach)."""
    from dpgov.tracking.anchor import ANCHOR_EXPERIMENT, AnchorError, anchors

    try:
        from dpgov.tracking.registry import Registry

        client = Registry(uri).client
        experiments = {
            str(e.experiment_id): e
            for e in _pages(
                lambda token: client.search_experiments(view_type=VIEW_ALL, page_token=token)
            )
        }
        ids = [i for i, e in experiments.items() if e.name != ANCHOR_EXPERIMENT]
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            for run in _pages(
                lambda token, chunk=chunk: client.search_runs(
                    chunk, run_view_type=VIEW_ALL, max_results=1000, page_token=token
                )
            ):
                snap.runs.append(_run_record(run, experiments))
        for rm in _pages(
            lambda token: client.search_registered_models(max_results=100, page_token=token)
        ):
            snap.models.append(_model_record(client, rm))
    except Exception as err:  # unreadable store: a finding, and the ledger checks still run
        snap.error = f"tracking store {uri} is unreadable: {_first_line(err)}"
        return snap
    try:
        snap.anchors = anchors(tracking_uri=uri)
    except AnchorError as err:
        snap.anchors_error = str(err)
    if release_artifacts:
        for m in snap.models:
            for version in sorted(set(m.aliases.values()), key=_version_key):
                run_id = m.versions[version].run_id if version in m.versions else None
                snap.artifacts[(m.name, version)] = _artifacts(client, run_id)
    return snap


def _pages(call: Any) -> Iterator[Any]:
    token = None
    while True:
        page = call(token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def _run_record(run: Any, experiments: dict[str, Any]) -> RunRecord:
    info, data = run.info, run.data
    exp = experiments.get(str(info.experiment_id))
    return RunRecord(
        run_id=str(info.run_id),
        experiment_id=str(info.experiment_id),
        experiment=str(exp.name) if exp is not None else "",
        name=str(info.run_name or ""),
        status=str(info.status),
        deleted=info.lifecycle_stage == "deleted"
        or (exp is not None and exp.lifecycle_stage == "deleted"),
        start_time=millis_iso(info.start_time) or "",
        end_time=millis_iso(info.end_time),
        tags=dict(data.tags),
        params=dict(data.params),
        metrics={k: float(v) for k, v in data.metrics.items()},
    )


def _model_record(client: Any, rm: Any) -> ModelRecord:
    name = str(rm.name)
    aliases = rm.aliases or {}
    if not isinstance(aliases, dict):  # older clients give a list of alias objects
        aliases = {a.alias: a.version for a in aliases}
    escaped = name.replace("'", "\\'")
    versions = {}
    for mv in _pages(
        lambda token: client.search_model_versions(f"name='{escaped}'", page_token=token)
    ):
        v = str(mv.version)
        versions[v] = VersionRecord(
            model=name,
            version=v,
            run_id=mv.run_id or None,
            tags=dict(mv.tags or {}),
            source=mv.source,
            created=millis_iso(mv.creation_timestamp) or "",
        )
    return ModelRecord(
        name=name,
        aliases={str(k): str(v) for k, v in aliases.items()},
        tags=dict(rm.tags or {}),
        versions=versions,
    )


@contextmanager
def _no_progress_bar() -> Iterator[None]:
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


def _artifacts(client: Any, run_id: str | None) -> ReleaseArtifacts:
    if run_id is None:
        return ReleaseArtifacts(problems=["the version names no run"])
    with tempfile.TemporaryDirectory(prefix="dpgov-audit-") as tmp, _no_progress_bar():
        return _release_files(
            run_id, lambda name: Path(client.download_artifacts(run_id, name, tmp))
        )


def _release_files(run_id: str, fetch: Callable[[str], Path]) -> ReleaseArtifacts:
    """The facts and statement of a release's run, each file found by ``fetch(name)``."""
    out = ReleaseArtifacts()
    for name in (FACTS_ARTIFACT, STATEMENT_ARTIFACT):
        try:
            data = json.loads(fetch(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            out.problems.append(f"{name} of run {run_id}: not among its artifacts")
            continue
        except Exception as err:  # a download or a parse failure: a problem of the release
            out.problems.append(f"{name} of run {run_id}: {_first_line(err)}")
            continue
        if name == FACTS_ARTIFACT:
            out.facts = data if isinstance(data, dict) else None
        else:
            out.statement = data if isinstance(data, dict) else None
    return out


# --------------------------------------------------------------------------------------- DVC


@dataclass
class DvcIndex:
    """Where data versions (DVC md5s, ``<md5>.dir`` for folders) can be found: outputs
    recorded in dvc.lock and .dvc files, the repository's cache, and local remotes."""

    root: Path | None = None
    recorded: dict[str, str] = field(default_factory=dict)  # md5 → where it is recorded
    caches: list[Path] = field(default_factory=list)
    remotes: list[Path] = field(default_factory=list)

    def locate(self, version: str) -> str | None:
        if version in self.recorded:
            return self.recorded[version]
        if len(version) < 3 or "/" in version or "\\" in version or version.startswith("."):
            return None
        for kind, folders in (("cache", self.caches), ("remote", self.remotes)):
            for folder in folders:
                for candidate in (
                    folder / "files" / "md5" / version[:2] / version[2:],
                    folder / version[:2] / version[2:],
                ):
                    if candidate.is_file():
                        return f"DVC {kind} {folder}"
        return None

    @property
    def searched(self) -> str:
        parts = []
        if self.root is not None:
            parts.append(f"dvc.lock and .dvc files under {self.root}")
        parts += [f"cache {c}" for c in self.caches] + [f"remote {r}" for r in self.remotes]
        return "; ".join(parts) or "no DVC repository or remote was found"


def dvc_index(root: str | Path | None = None) -> DvcIndex:
    from dpgov import config
    from dpgov.data.versioning import find_dvc_root

    index = DvcIndex()
    found = Path(root).resolve() if root is not None else find_dvc_root(Path.cwd())
    if found is not None and (found / ".dvc").is_dir():
        index.root = found
        _scan_recorded(found, index)
        cache = found / ".dvc" / "cache"
        if cache.is_dir():
            index.caches.append(cache)
        index.remotes.extend(_local_remotes(found / ".dvc"))
    default = config.dvc_remote()
    if default.is_dir() and all(default.resolve() != r.resolve() for r in index.remotes):
        index.remotes.append(default)
    return index


def _scan_recorded(root: Path, index: DvcIndex) -> None:
    import yaml

    files = []
    lock = root / "dvc.lock"
    if lock.is_file():
        files.append(lock)
    skip = {".dvc", ".git", ".venv", "node_modules", "__pycache__", ".dpgov"}
    for folder, dirs, names in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = [d for d in dirs if d not in skip and depth < 4]
        files += [Path(folder) / n for n in names if n.endswith(".dvc")]
    for file in files:
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        outs: list[Any] = []
        if isinstance(doc, dict):
            outs += doc.get("outs") or []
            for stage in (doc.get("stages") or {}).values():
                if isinstance(stage, dict):
                    outs += stage.get("outs") or []
        for out in outs:
            if isinstance(out, dict) and out.get("md5"):
                rel = file.relative_to(root).as_posix()
                index.recorded.setdefault(str(out["md5"]), f"{rel}: {out.get('path', '')}")


def _local_remotes(dvc_dir: Path) -> list[Path]:
    out: list[Path] = []
    try:
        from configobj import ConfigObj
    except ImportError:  # pragma: no cover - a dependency of dvc
        return out
    urls: dict[str, str] = {}
    for name in ("config", "config.local"):
        file = dvc_dir / name
        if not file.is_file():
            continue
        try:
            conf = ConfigObj(str(file))
        except Exception:
            continue
        for section, values in conf.items():
            if section.startswith("remote") and isinstance(values, dict) and "url" in values:
                urls[section] = str(values["url"])
    for url in urls.values():
        if url.startswith("file://"):
            url = url[len("file://") :]
        elif "://" in url:
            continue  # s3, ssh, ...: not looked into here
        path = Path(url) if Path(url).is_absolute() else dvc_dir / url
        if path.is_dir():
            out.append(path.resolve())
    return out


# ------------------------------------------------------------------------------------ helpers


def millis_iso(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (1 << 62, v)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
