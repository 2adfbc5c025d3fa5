"""Anchors in a real MLflow store: recorded, read back, immutable, visible when deleted."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpgov.tracking.anchor import (
    ANCHOR_EXPERIMENT,
    AnchorError,
    anchors,
    record_anchor,
    try_record_anchor,
)

A, B = "a" * 64, "b" * 64


@pytest.fixture
def store(mlflow_store_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import shutil

    monkeypatch.setenv("DPGOV_HOME", str(tmp_path))
    shutil.copy(mlflow_store_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_anchors_are_recorded_read_back_and_idempotent(store):
    first = record_anchor(3, A, ledger="postgresql://dpgov:secret@db/ledger", tracking_uri=store)
    record_anchor(7, B, ledger="postgresql://dpgov:secret@db/ledger", tracking_uri=store)
    record_anchor(3, A, ledger="postgresql://dpgov:secret@db/ledger", tracking_uri=store)
    got = anchors(tracking_uri=store)
    assert [(a.seq, a.hash) for a in got] == [(3, A), (7, B)]
    assert all(a.time and a.run_id == first.run_id for a in got)
    assert got[0].ledger == "postgresql://dpgov:***@db/ledger"  # no password in MLflow


def test_an_entry_anchored_again_with_another_hash_is_refused(store):
    record_anchor(3, A, ledger="sqlite:///l.db", tracking_uri=store)
    with pytest.raises(AnchorError, match="entry 3 was anchored before with hash aaaaaaaaaaaa"):
        record_anchor(3, B, ledger="sqlite:///l.db", tracking_uri=store)
    assert try_record_anchor(3, B, ledger="sqlite:///l.db", tracking_uri=store) is None
    assert [a.hash for a in anchors(tracking_uri=store)] == [A]


def test_deleted_anchors_are_still_read(store):
    from mlflow import MlflowClient

    old = record_anchor(3, A, ledger="sqlite:///l.db", tracking_uri=store)
    client = MlflowClient(tracking_uri=store)
    client.delete_run(old.run_id)
    record_anchor(5, B, ledger="sqlite:///l.db", tracking_uri=store)  # goes to a new run
    client.delete_experiment(client.get_experiment_by_name(ANCHOR_EXPERIMENT).experiment_id)
    got = anchors(tracking_uri=store)
    assert [(a.seq, a.deleted) for a in got] == [(3, True), (5, True)]


def test_bad_input_and_an_unreadable_store(store, tmp_path):
    with pytest.raises(AnchorError, match="SHA-256"):
        record_anchor(3, "short", tracking_uri=store)
    with pytest.raises(AnchorError, match=">= 1"):
        record_anchor(0, A, tracking_uri=store)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database" * 50)
    with pytest.raises(AnchorError, match="cannot read ledger anchors"):
        anchors(tracking_uri=f"sqlite:///{bad}")
