"""Sweeps on small synthetic data against a real ledger, Opacus and MLflow (SQLite) in a tmp
dpgov home; the command line is run in-process through its real entry point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli import run_dpgov

REPO = Path(__file__).resolve().parents[3]

# Tiny runs: 400 training patients in 2 blocks (2001, 2002), q ≈ 0.07, logistic regression.
TRAIN = {
    "epochs": 2,
    "batch_size": 30,
    "n_boot": 5,
    "min_group_n": 10,
    "learning_rate": 0.5,
    "device": "cpu",
    "experiment": "sweep-test",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Source, contract and prepared data of dataset ``synth`` (one per module: preparing and
    validating it once is what every sweep test shares)."""
    from dpgov.testing.runs import governed_data

    return governed_data(tmp_path_factory.mktemp("sweep-data"), n=500, dataset="synth")


@pytest.fixture
def data(world: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The prepared data; the test works from the world's folder, where the validation the
    sweep records (data/validation/synth) is kept apart from the repository."""
    from dpgov.data import load_prepared

    monkeypatch.chdir(world.prepared.parent)
    return load_prepared(world.prepared)


@pytest.fixture
def params_file(tmp_path: Path, world: Any, data: Any) -> Callable[..., Path]:
    """A params file pointing at the world's data."""

    def make(**train: Any) -> Path:
        path = tmp_path / f"params-{len(list(tmp_path.glob('params-*')))}.yaml"
        body = world.params({"train": {**TRAIN, **train}, "model": {"name": "logreg"}})
        path.write_text(yaml.safe_dump(body.model_dump(mode="json")))
        return path

    return make


@pytest.fixture
def params(world: Any, data: Any) -> Callable[..., Any]:
    def make(**train: Any) -> Any:
        return world.params({"train": {**TRAIN, **train}, "model": {"name": "logreg"}})

    return make


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    """The repository's default policy with its budget changed."""

    def write(**budget: Any) -> Path:
        policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
        policy["budget"].update(budget)
        path = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*')))}.yaml"
        path.write_text(yaml.safe_dump(policy))
        return path

    return write


@pytest.fixture
def dpgov(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run ``dpgov ARGS`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args)

    return run
