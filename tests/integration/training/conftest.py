"""Governed training on small synthetic data against a real ledger and MLflow (SQLite) in a
tmp dpgov home.

The step functions (plan, reserve, train, commit) take data in memory (``small_data``); a whole
governed run validates its data first, so it trains on ``world``: a source, its contract and
the data prepared from them (dataset ``synth``, blocks 2001 and 2002), one per module, with its
validation recorded beside it (``run_options``) and reused by the module's runs."""

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


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Validatable data of dataset ``synth``: 500 patients, 399 training (2001: 184, 2002: 215).
    ``world.params(params)`` trains ``params`` on it."""
    from dpgov.testing.runs import governed_data

    return governed_data(tmp_path_factory.mktemp("training-data"), n=500, dataset="synth")


@pytest.fixture
def world_data(world: Any) -> Any:
    """The world's prepared data, as the step functions read it."""
    from dpgov.data import load_prepared

    return load_prepared(world.prepared)


@pytest.fixture
def run_options(world: Any) -> Any:
    """Options of a governed run on the world: its validation is written beside the world
    (never under the repository's data/validation) and reused by later runs."""
    from dpgov.training.governed import RunOptions

    return RunOptions(validation_out=str(world.prepared.parent / "validation"))


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
