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

# Tiny runs: 300 training patients in 2 blocks, q = 0.1, T = 20 steps (logistic regression).
TRAIN = {
    "epochs": 2,
    "batch_size": 30,
    "n_boot": 5,
    "min_group_n": 10,
    "learning_rate": 0.5,
    "device": "cpu",
    "experiment": "sweep-test",
}


@pytest.fixture
def data() -> Any:
    from dpgov.testing.memory import make_tabular

    return make_tabular(n_train=300, n_test=200, blocks=2, seed=0)


@pytest.fixture
def params_file(tmp_path: Path, data: Any) -> Callable[..., Path]:
    """The synthetic data on disk and a params file pointing at it."""
    from dpgov.testing.memory import write_prepared

    folder = write_prepared(data, tmp_path / "prepared" / "synth")

    def make(**train: Any) -> Path:
        path = tmp_path / f"params-{len(list(tmp_path.glob('params-*')))}.yaml"
        body = {"train": {"data": str(folder), **TRAIN, **train}, "model": {"name": "logreg"}}
        path.write_text(yaml.safe_dump(body))
        return path

    return make


@pytest.fixture
def params() -> Callable[..., Any]:
    from dpgov.training.params import parse_params

    def make(**train: Any) -> Any:
        return parse_params({"train": {**TRAIN, **train}, "model": {"name": "logreg"}})

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
