"""Fixtures for the data tests: small contracts and tables made in the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture
def contract_dict() -> dict[str, Any]:
    """A small tabular contract (a fresh copy for each test to change)."""
    from dpgov.testing.sources import tabular_contract

    return tabular_contract("small", min_block=5, min_subgroup=2)


@pytest.fixture
def write_contract(tmp_path: Path):
    def write(data: dict[str, Any], name: str = "contract.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def small_table():
    """40 patients over two years, clean."""
    from dpgov.testing.sources import make_tabular

    return make_tabular(40, n_blocks=2, seed=1)


@pytest.fixture
def write_policy(tmp_path: Path):
    """Write a policy file with the given δ (the rest as in the default policy)."""

    def write(delta: float = 1e-5, epsilon: float = 8.0) -> Path:
        path = tmp_path / f"policy-{delta:g}.yaml"
        path.write_text(f"version: 1\nbudget:\n  epsilon_per_block: {epsilon}\n  delta: {delta}\n")
        return path

    return write
