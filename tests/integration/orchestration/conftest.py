"""Flows against one session-scoped Prefect test harness (a temporary server), with a real
SQLite ledger and MLflow store in a tmp dpgov home, and small synthetic cohorts arriving in
year blocks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.orchestration import harness

harness.isolate_prefect_home()

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """The Prefect test harness: started once per test session (never nested)."""
    yield from harness.session()


def small_train(**over: Any) -> dict[str, Any]:
    """``train:`` params for a run of a few seconds (σ calibrated: retraining needs it)."""
    base = {
        "epochs": 2,
        "batch_size": 64,
        "n_boot": 0,
        "reference": False,
        "min_group_n": 10,
        "learning_rate": 0.5,
        "target_epsilon": 2.0,
        "device": "cpu",
        "model_name": "orch-model",
    }
    return {**base, **over}


def write_policy(folder: Path, **budget: Any) -> Path:
    """The repository's default policy with its budget changed and fairness off (synthetic
    subgroups are small)."""
    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["budget"].update(budget)
    for key in ("max_auroc_gap", "max_fnr_gap", "max_auroc_gap_widening", "max_fnr_gap_widening"):
        policy["fairness"][key] = None
    policy["fairness"]["require_judgeable"] = False
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"policy-{len(list(folder.glob('policy-*')))}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@dataclass
class Cohort:
    """A synthetic cohort split by year into arrival files, and where ingest puts it."""

    root: Path  # a DVC repository
    arrivals: list[Path]
    contract: Path
    raw: Path
    prepared: Path
    dataset: str

    def params(self, **train: Any) -> dict[str, Any]:
        return {
            "data": {
                "dataset": self.dataset,
                "source": str(self.raw),
                "contract": str(self.contract),
            },
            "train": small_train(data=str(self.prepared), **train),
        }


@pytest.fixture
def cohort(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Cohort]:
    """``cohort(arrivals=[[2001, 2002], [2003, 2004]])``: a git+DVC repository whose remote is
    $DPGOV_HOME/dvc-remote, and one arrival file per group of years. The test then works from
    the repository's root, as a user would (validations land in its ``data/validation``)."""

    def make(
        arrivals: list[list[int]] | None = None, n: int = 800, dataset: str = "synth"
    ) -> Cohort:
        from dpgov.data.ingest import init_repo
        from dpgov.testing.sources import make_tabular, tabular_contract, write_yaml

        groups = arrivals or [[2001, 2002], [2003, 2004]]
        root = init_repo(tmp_path / "repo")
        monkeypatch.chdir(root)
        table = make_tabular(n, n_blocks=4, start_year=2001, seed=1)
        folder = tmp_path / "arrivals"
        folder.mkdir()
        files = []
        for k, years in enumerate(groups, start=1):
            path = folder / f"arrival-{k}.csv"
            table[table["year"].isin(years)].to_csv(path, index=False)
            files.append(path)
        contract = write_yaml(
            tabular_contract(dataset, min_block=20, min_subgroup=5), root / "contract.yaml"
        )
        return Cohort(
            root=root,
            arrivals=files,
            contract=contract,
            raw=root / "raw" / f"{dataset}.csv",
            prepared=root / "prepared" / dataset,
            dataset=dataset,
        )

    return make
