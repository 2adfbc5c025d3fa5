"""Fixtures of the reliability tests: one zygote (training processes to kill, forked from a
process that imported the training stack once), one prepared synthetic cohort, and isolated
worlds (home, SQLite ledger, MLflow SQLite store) per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.reliability.helpers import World, write_policy
from tests.integration.reliability.zygote import Zygote

@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A prepared synthetic cohort of 600 patients in 4 year blocks: (prepared, raw, contract)."""
    from dpgov.data.synthetic import make_prepared

    root = tmp_path_factory.mktemp("cohort")
    prepared = make_prepared(root, n=600)
    return prepared, root / "raw" / "synthetic.csv", root / "raw" / "synthetic.yaml"


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store (migrating one costs ~2 s)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def world(
    tmp_path: Path, cohort: tuple[Path, Path, Path], mlflow_template: Path
) -> World:
    """An isolated installation: SQLite ledger and MLflow store in a fresh home."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    prepared, raw, contract = cohort
    return World(
        home=home,
        data=prepared,
        raw=raw,
        contract=contract,
        policy=write_policy(tmp_path / "policy.yaml"),
        ledger_url=f"sqlite:///{home / 'ledger.db'}",
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
    )
