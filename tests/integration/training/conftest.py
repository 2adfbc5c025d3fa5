"""Governed training on small synthetic data against a real ledger and MLflow (SQLite) in a
tmp dpgov home."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


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
def small_data() -> Any:
    from dpgov.testing.memory import make_tabular

    return make_tabular(n_train=300, n_test=200, blocks=2, seed=0)


@pytest.fixture
def small_params() -> Callable[..., Any]:
    """Params for a run of a few seconds; keyword overrides go into ``train``. σ is fixed
    (calibration costs seconds of PLD bisection); pass ``noise_multiplier=None`` to calibrate."""
    from dpgov.training.params import parse_params

    def make(model: str = "logreg", **train: Any) -> Any:
        base = {
            "epochs": 2,
            "batch_size": 30,
            "n_boot": 0,
            "reference": False,
            "min_group_n": 10,
            "learning_rate": 0.5,
            "target_epsilon": 3.0,
            "noise_multiplier": 1.5,
            "model_name": "test-model",
            "device": "cpu",
        }
        return parse_params({"train": {**base, **train}, "model": {"name": model}})

    return make
