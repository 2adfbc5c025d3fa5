"""The weights digest reads the version's own store, whatever tracking URI the process set.

MLflow resolves ``models:/`` URIs against the process-wide registry URI, not the tracking URI
passed to ``download_artifacts``; in the full suite an earlier test's ``set_tracking_uri`` made
the gate read another store, find no weights and judge them changed ("facts_bound: the model
weights changed since tracking"). This reproduces it in one test."""

from __future__ import annotations

from pathlib import Path

from tests.integration.gate.conftest import MODEL


def test_weights_digest_ignores_the_process_tracking_uri(env, tmp_path: Path) -> None:
    import mlflow

    from dpgov.ledger.releases import DIGEST_WEIGHTS, binding_of
    from dpgov.tracking.registry import Registry

    version, _ = env.register(torch_model=True)
    bound = binding_of(env.ledger, MODEL, version)
    assert bound is not None and bound.digests[DIGEST_WEIGHTS] is not None

    saved = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'another.db'}")  # as an earlier test did
    try:
        now = Registry(env.client.tracking_uri).artifact_digests(MODEL, version)
    finally:
        mlflow.set_tracking_uri(saved)
    assert now == bound.digests
