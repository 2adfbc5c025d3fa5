"""The tracking reader's SQL backend gives exactly what its client backend gives.

The world's store is varied first the way people vary one: a deleted run, a run in a deleted
experiment, a NaN metric, a deleted model version, more aliases, model and version tags, a
second registered model; then both backends snapshot it and the snapshots must be equal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dpgov.tracking import reader
from dpgov.tracking.reader import sql
from dpgov.tracking.records import TrackingSnapshot

MODEL = "audit-model"


def _plain(x: Any) -> str:
    def nan_free(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return "NaN"
        if isinstance(v, dict):
            return {k: nan_free(w) for k, w in v.items()}
        if isinstance(v, list):
            return [nan_free(w) for w in v]
        return v

    return json.dumps(nan_free(dataclasses.asdict(x)), sort_keys=True, default=str)


def _both(uri: str) -> tuple[TrackingSnapshot, TrackingSnapshot]:
    fast = reader.snapshot(uri, backend="sql")
    slow = reader.snapshot(uri, backend="client")
    assert fast.error is None and slow.error is None and slow.anchors_error is None
    return fast, slow


def _assert_same(fast: TrackingSnapshot, slow: TrackingSnapshot) -> None:
    assert {r.run_id: _plain(r) for r in fast.runs} == {r.run_id: _plain(r) for r in slow.runs}
    assert sorted(map(_plain, fast.models)) == sorted(map(_plain, slow.models))
    assert [_plain(a) for a in fast.anchors] == [_plain(a) for a in slow.anchors]
    assert {k: (v.facts, v.statement) for k, v in fast.artifacts.items()} == {
        k: (v.facts, v.statement) for k, v in slow.artifacts.items()
    }


def test_fast_path_equals_the_client_on_a_varied_store(clone) -> None:
    client = clone.client()
    first, second = (r.model_version for r in clone.world.runs)
    # runs: one deleted, one with a NaN metric, one in an experiment that is then deleted
    extra = client.create_run(client.get_experiment_by_name("audit-tests").experiment_id)
    client.log_metric(extra.info.run_id, "loss", float("nan"))
    client.set_tag(extra.info.run_id, "note", "scratch")
    client.delete_run(extra.info.run_id)
    gone = client.create_experiment("to-delete")
    kept = client.create_run(gone)
    client.log_param(kept.info.run_id, "noise_multiplier", "1.0")
    client.set_terminated(kept.info.run_id)
    client.delete_experiment(gone)
    # models: aliases, tags, a second model, a deleted version
    client.set_registered_model_alias(MODEL, "staging", second)
    client.set_registered_model_tag(MODEL, "owner", "ml-team")
    client.set_model_version_tag(MODEL, first, "reviewed", "yes")
    client.create_registered_model("other-model", tags={"kind": "baseline"})
    other = client.create_model_version(
        "other-model", f"runs:/{kept.info.run_id}/model", run_id=kept.info.run_id
    )
    client.create_model_version("other-model", f"runs:/{kept.info.run_id}/model2")
    client.delete_model_version("other-model", other.version)

    fast, slow = _both(clone.tracking_uri)
    _assert_same(fast, slow)
    assert len(fast.anchors) == 3
    assert {r.run_id for r in fast.runs if r.deleted} == {extra.info.run_id, kept.info.run_id}
    [model] = [m for m in fast.models if m.name == MODEL]
    assert model.aliases == {"champion": first, "staging": second}
    assert fast.artifacts[(MODEL, first)].facts is not None  # read from the artifact folder
    [other_model] = [m for m in fast.models if m.name == "other-model"]
    assert other.version not in other_model.versions  # deleted versions are left out


def test_the_audit_reads_the_fast_path_and_stays_clean(clone, audit) -> None:
    assert sql.read(clone.tracking_uri).runs  # the world's store is readable fast
    result = audit()
    assert result.code == 0, result.out + result.err
    assert result.json["counts"]["mlflow_runs"] == len(clone.world.runs) * 1


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:5000",
        "databricks",
        "file:///tmp/mlruns",
        "./mlruns",
        "mysql://u@127.0.0.1/mlflow",  # no MySQL driver installed here
        "postgresql://u@/db?host=/nonexistent-socket-dir",  # nothing answers
    ],
)
def test_other_stores_take_the_client_path(uri: str) -> None:
    with pytest.raises(sql.NotReadable):
        sql.read(uri)


def test_a_store_without_mlflows_columns_takes_the_client_path(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (run_uuid TEXT)")
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    with pytest.raises(sql.NotReadable, match=r"lacks|no table"):
        sql.read(f"sqlite:///{path}")


def test_postgresql_urls_use_the_installed_driver() -> None:
    assert sql.sqlalchemy_url("postgresql://u@h:5432/db") == ("postgresql+psycopg://u@h:5432/db")
    assert sql.sqlalchemy_url("postgresql+psycopg://u@h/db") == ("postgresql+psycopg://u@h/db")


def test_fast_path_equals_the_client_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """The same comparison on an MLflow store in a real PostgreSQL schema."""
    from mlflow import MlflowClient

    from dpgov.tracking.anchor import record_anchor

    client = MlflowClient(tracking_uri=postgres_url, registry_uri=postgres_url)
    exp = client.create_experiment("pg-audit", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp, tags={"dpgov.reservation": "r-1", "dpgov.private": "true"})
    client.log_param(run.info.run_id, "noise_multiplier", "1.1")
    client.log_metric(run.info.run_id, "epsilon", 1.5)
    client.log_metric(run.info.run_id, "epsilon", 1.7, step=1)
    client.log_metric(run.info.run_id, "auroc", float("nan"))
    client.set_terminated(run.info.run_id)
    gone = client.create_run(exp)
    client.delete_run(gone.info.run_id)
    client.create_registered_model("pg-model")
    version = client.create_model_version(
        "pg-model", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("pg-model", "champion", version.version)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    record_anchor(1, "a" * 64, ledger=ledger, tracking_uri=postgres_url)
    record_anchor(2, "b" * 64, ledger=ledger, tracking_uri=postgres_url)

    assert sql.read(postgres_url).runs
    fast, slow = _both(postgres_url)
    _assert_same(fast, slow)
    [record] = [r for r in fast.runs if r.run_id == run.info.run_id]
    assert record.metrics["epsilon"] == 1.7 and math.isnan(record.metrics["auroc"])
    assert [a.seq for a in fast.anchors] == [1, 2]
    assert fast.artifacts[("pg-model", str(version.version))].problems  # no facts logged
