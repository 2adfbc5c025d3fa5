"""The SQL backend: an MLflow SQL tracking store's tables read directly, read-only.

Reading ~3,000 runs through ``MlflowClient.search_runs`` builds an ORM object for every run,
tag, param and metric, after importing MLflow: most of an audit's time. The same records come
from eight SELECTs. Only where the store is exactly what this module knows: a SQL database
(SQLite, PostgreSQL, MySQL) whose MLflow tables have the columns read here, one workspace
(MLflow's ``default``), and no ``MLFLOW_WORKSPACE`` chosen. Anything else raises
:class:`NotReadable` and the reader takes the client backend instead
(:mod:`dpgov.tracking.reader.client`); the tests check that both give the same records of the
same store.

What the client would filter, this filters too: model versions MLflow marks deleted
(``Deleted_Internal``) are left out; deleted runs and experiments are kept and marked, as the
client reads them with ``ViewType.ALL``; a run's metrics are its latest values; an anchor's
sequence numbers are its ``anchor_seq`` history in MLflow's order (timestamp, step, value).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from dpgov.tracking.anchor import ANCHOR_EXPERIMENT, METRIC_SEQ, TAG_LEDGER, anchors_in_run
from dpgov.tracking.records import (
    Anchor,
    ModelRecord,
    RunRecord,
    StoreRecords,
    VersionRecord,
    first_line,
    millis_iso,
)

SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
DELETED_VERSION_STAGE = "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages
DEFAULT_WORKSPACE = "default"
COLUMNS = {
    "experiments": {"experiment_id", "name", "lifecycle_stage"},
    "runs": {
        "run_uuid",
        "name",
        "status",
        "start_time",
        "end_time",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
    },
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "is_nan", "run_uuid"},
    "metrics": {"key", "value", "timestamp", "step", "run_uuid"},
    "registered_models": {"name"},
    "registered_model_tags": {"key", "value", "name"},
    "registered_model_aliases": {"alias", "version", "name"},
    "model_versions": {"name", "version", "creation_time", "current_stage", "source", "run_id"},
    "model_version_tags": {"key", "value", "name", "version"},
}


class NotReadable(Exception):
    """This store is not one the SQL backend reads: use the client backend."""


def sqlalchemy_url(uri: str) -> str:
    """The SQLAlchemy URL of a SQL tracking URI; NotReadable for any other store."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in SQL_SCHEMES or "://" not in uri:
        raise NotReadable(f"{scheme} is not a SQL store")
    if scheme in ("postgresql", "postgres") and "+" not in uri.split(":", 1)[0]:
        return "postgresql+psycopg://" + uri.split("://", 1)[1]  # the driver dpgov installs
    return uri


def read(uri: str) -> StoreRecords:
    """Every experiment's runs (deleted ones too), registered models with their live versions
    and aliases, and the ledger anchors, in one read-only transaction."""
    import sqlalchemy as sa

    if os.environ.get("MLFLOW_WORKSPACE"):
        raise NotReadable("a workspace is chosen")
    try:
        engine = sa.create_engine(sqlalchemy_url(uri))
    except (ImportError, sa.exc.ArgumentError) as err:  # no driver for it here, a bad URL
        raise NotReadable(first_line(err)) from err
    try:
        with engine.connect() as conn:
            return _read(conn, _check_schema(conn))
    except sa.exc.SQLAlchemyError as err:
        raise NotReadable(first_line(err)) from err
    finally:
        engine.dispose()


def _check_schema(conn: Any) -> set[str]:
    """NotReadable unless every table and column read here exists; returns the tables that
    have MLflow's ``workspace`` column."""
    import sqlalchemy as sa

    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names())
    scoped = set()
    for table, needed in COLUMNS.items():
        if table not in present:
            raise NotReadable(f"no table {table}")
        have = {c["name"] for c in inspector.get_columns(table)}
        if not needed <= have:
            raise NotReadable(f"table {table} lacks {sorted(needed - have)}")
        if "workspace" in have:
            scoped.add(table)
    if "workspaces" in present:
        names = {r[0] for r in conn.execute(sa.text("SELECT name FROM workspaces"))}
        if names - {DEFAULT_WORKSPACE}:
            raise NotReadable("more than one workspace")
    return scoped


def _rows(conn: Any, sql: str) -> list[Any]:
    import sqlalchemy as sa

    return list(conn.execute(sa.text(sql)))


def _read(conn: Any, scoped: set[str]) -> StoreRecords:
    out = StoreRecords()
    experiments = {
        str(e.experiment_id): (str(e.name), e.lifecycle_stage == "deleted")
        for e in _rows(conn, "SELECT experiment_id, name, lifecycle_stage FROM experiments")
    }
    tags: dict[str, dict[str, str]] = defaultdict(dict)
    for r in _rows(conn, "SELECT run_uuid, key, value FROM tags"):
        tags[r.run_uuid][r.key] = r.value
    params: dict[str, dict[str, str]] = defaultdict(dict)
    for r in _rows(conn, "SELECT run_uuid, key, value FROM params"):
        params[r.run_uuid][r.key] = r.value
    metrics: dict[str, dict[str, float]] = defaultdict(dict)
    for r in _rows(conn, "SELECT run_uuid, key, value, is_nan FROM latest_metrics"):
        metrics[r.run_uuid][r.key] = float("nan") if r.is_nan else float(r.value)
    anchor_ids = {i for i, (name, _) in experiments.items() if name == ANCHOR_EXPERIMENT}
    anchor_runs = []
    for r in _rows(
        conn,
        "SELECT run_uuid, name, status, start_time, end_time, lifecycle_stage, artifact_uri, "
        "experiment_id FROM runs ORDER BY start_time DESC, run_uuid",
    ):
        exp_id = str(r.experiment_id)
        if exp_id not in experiments:
            continue  # a run of another workspace's experiment
        name, exp_deleted = experiments[exp_id]
        out.artifact_uris[r.run_uuid] = r.artifact_uri or ""
        if exp_id in anchor_ids:
            anchor_runs.append((r, exp_deleted))
            continue
        out.runs.append(
            RunRecord(
                run_id=str(r.run_uuid),
                experiment_id=exp_id,
                experiment=name,
                name=str(r.name or ""),
                status=str(r.status),
                deleted=r.lifecycle_stage == "deleted" or exp_deleted,
                start_time=millis_iso(r.start_time) or "",
                end_time=millis_iso(r.end_time),
                tags=tags.get(r.run_uuid, {}),
                params=params.get(r.run_uuid, {}),
                metrics=metrics.get(r.run_uuid, {}),
            )
        )
    out.anchors = _anchors(conn, anchor_runs, params, tags)
    out.models = _models(conn, scoped)
    return out


def _models(conn: Any, scoped: set[str]) -> list[ModelRecord]:
    model_tags: dict[str, dict[str, str]] = defaultdict(dict)
    for r in _rows(
        conn, _in_workspace(scoped, "SELECT name, key, value FROM registered_model_tags")
    ):
        model_tags[r.name][r.key] = r.value
    aliases: dict[str, dict[str, str]] = defaultdict(dict)
    for r in _rows(
        conn, _in_workspace(scoped, "SELECT name, alias, version FROM registered_model_aliases")
    ):
        aliases[r.name][str(r.alias)] = str(r.version)
    version_tags: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for r in _rows(
        conn, _in_workspace(scoped, "SELECT name, version, key, value FROM model_version_tags")
    ):
        version_tags[(r.name, str(r.version))][r.key] = r.value
    versions: dict[str, dict[str, VersionRecord]] = defaultdict(dict)
    for r in _rows(
        conn,
        _in_workspace(
            scoped,
            "SELECT name, version, run_id, source, creation_time, current_stage "
            "FROM model_versions",
        ),
    ):
        if r.current_stage == DELETED_VERSION_STAGE:
            continue
        v = str(r.version)
        versions[r.name][v] = VersionRecord(
            model=str(r.name),
            version=v,
            run_id=r.run_id or None,
            tags=version_tags.get((r.name, v), {}),
            source=r.source,
            created=millis_iso(r.creation_time) or "",
        )
    models = [
        ModelRecord(
            name=str(r.name),
            aliases=aliases.get(r.name, {}),
            tags=model_tags.get(r.name, {}),
            versions=versions.get(r.name, {}),
        )
        for r in _rows(conn, _in_workspace(scoped, "SELECT name FROM registered_models"))
    ]
    return sorted(models, key=lambda m: m.name)


def _in_workspace(scoped: set[str], sql: str) -> str:
    """``sql`` limited to MLflow's default workspace where its table has workspaces."""
    table = sql.rsplit(" FROM ", 1)[1].strip()
    return f"{sql} WHERE workspace = '{DEFAULT_WORKSPACE}'" if table in scoped else sql


def _anchors(
    conn: Any,
    runs: list[tuple[Any, bool]],
    params: dict[str, dict[str, str]],
    tags: dict[str, dict[str, str]],
) -> list[Anchor]:
    """What :func:`dpgov.tracking.anchor.anchors` reads through the client."""
    taken: dict[str, dict[int, int]] = defaultdict(dict)
    for r in _rows(
        conn,
        "SELECT run_uuid, value, timestamp FROM metrics WHERE key = "
        f"'{METRIC_SEQ}' ORDER BY run_uuid, timestamp, step, value",
    ):
        taken[r.run_uuid].setdefault(int(r.value), int(r.timestamp))
    out = []
    for run, exp_deleted in runs:
        run_id = str(run.run_uuid)
        out += anchors_in_run(
            run_id,
            params.get(run_id, {}),
            tags.get(run_id, {}).get(TAG_LEDGER),
            taken[run_id],
            exp_deleted or run.lifecycle_stage == "deleted",
        )
    return sorted(out, key=lambda a: (a.seq, a.time))
