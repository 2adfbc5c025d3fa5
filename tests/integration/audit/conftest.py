"""A governed world to audit, built once: real DVC, real training, real gate, real MLflow.

``world`` (session scope) holds, in a tmp folder:

- a DVC repository (``dvc init --no-scm``) whose ``dvc add``-ed folder holds the prepared data;
  its md5 is the data version every charge records;
- a dpgov home with the SQLite ledger and MLflow store: two governed DP training runs
  (:func:`dpgov.training.governed.run_governed` without its gate, synthetic data validated
  against its contract, a few steps), each commit anchored in the tracking store as
  training's commit step will do; a crashed run (aborted);
  version 1 approved by alice and promoted to ``@champion`` through the gate; the head anchored
  last (as ``dpgov audit --anchor`` does).

Tests never change the world: :func:`clone` copies it, then the test makes one real fault.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
MODEL = "audit-model"
DATASET = "synth"


@dataclass
class World:
    root: Path
    home: Path
    repo: Path  # the DVC repository
    policy: Path
    data_version: str
    runs: list[Any]  # RunSummary of each governed run
    aborted: str  # the crashed run's reservation id

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.home / 'ledger.db'}"


def _policy(path: Path) -> Path:
    """The default policy, with utility and fairness limits off (synthetic data is tiny)."""
    import yaml

    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["utility"] = {"min_auroc": None, "max_calibration_error": None}
    policy["fairness"] = {
        "max_auroc_gap": None,
        "max_fnr_gap": None,
        "max_auroc_gap_widening": None,
        "max_fnr_gap_widening": None,
        "require_judgeable": False,
    }
    path.write_text(yaml.safe_dump(policy))
    return path


def _dvc(repo: Path, *args: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout}\n{proc.stderr}"


def _data_repo(repo: Path, prepared: Path) -> str:
    """A DVC repository whose added folder holds (a copy of) the prepared data; returns its
    md5."""
    from dpgov.data import data_version

    folder = repo / "data" / "prepared" / DATASET
    folder.parent.mkdir(parents=True)
    shutil.copytree(prepared, folder)
    _dvc(repo, "init", "--no-scm", "-q")
    _dvc(repo, "add", "-q", "data/prepared/synth")
    version = data_version(folder)
    recorded = (repo / "data" / "prepared" / "synth.dvc").read_text()
    assert version.removesuffix(".dir") in recorded
    return version


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from mlflow import MlflowClient

    from dpgov.accounting import DpSgdMechanism
    from dpgov.gate.approvals import record_approval
    from dpgov.gate.promotion import promote
    from dpgov.ledger import Ledger
    from dpgov.testing.policies import put_in_force
    from dpgov.testing.runs import governed_data
    from dpgov.tracking.anchor import record_anchor, record_head
    from dpgov.tracking.registry import Registry
    from dpgov.training.governed import RunOptions, run_governed
    from dpgov.training.params import parse_params

    root = tmp_path_factory.mktemp("audit-world")
    home, repo = root / "home", root / "repo"
    home.mkdir()
    repo.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").search_experiments()
    policy = _policy(root / "policy.yaml")
    # a governed run validates its data first: a source, its contract and the data prepared
    # from them (399 training patients in blocks 2001 and 2002), copied into the DVC repository
    source = governed_data(root / "source", n=500, dataset=DATASET, seed=3)
    version = _data_repo(repo, source.prepared)
    prepared = repo / "data" / "prepared" / DATASET
    first_block = sorted(json.loads((prepared / "meta.json").read_text())["blocks"])[0]
    params = parse_params(
        {
            "data": source.data,
            "train": {
                "data": str(prepared),
                "epochs": 1,
                "batch_size": 40,
                "n_boot": 0,
                "reference": False,
                "min_group_n": 10,
                "noise_multiplier": 1.5,
                "target_epsilon": 3.0,
                "model_name": MODEL,
                "experiment": "audit-tests",
                "device": "cpu",
            },
            "model": {"name": "logreg"},
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPGOV_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.delenv("DPGOV_LEDGER_URL", raising=False)
        mp.delenv("DPGOV_LEDGER_HMAC_KEY", raising=False)
        mp.setenv("DPGOV_ACTOR", "trainer")
        ledger = Ledger.open()
        loaded = put_in_force(policy, ledger=ledger, actor="trainer")  # the policy in force
        options = RunOptions(gate=False, validation_out=str(root / "validation"))
        runs = []
        for _ in range(2):
            summary = run_governed(params, loaded, ledger=ledger, options=options)
            assert summary.validation["data_version"] == version
            commit = ledger.entries(kind="commit")[-1]
            assert commit.seq == summary.ledger_entries[1]
            record_anchor(commit.seq, commit.hash, ledger=ledger)  # what training will call
            runs.append(summary)
        crashed = ledger.reserve(
            dataset=DATASET,
            blocks=[first_block],
            budget=loaded.policy.budget,
            mechanism=DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.1, steps=5),
            policy_sha256=loaded.sha256,
            data_version=version,
        )
        ledger.abort(crashed.id, reason="after 2 steps: RuntimeError: out of memory")
        registry = Registry()
        first = runs[0].model_version
        with pytest.MonkeyPatch.context() as as_alice:  # who acts is the OS user: alice
            as_alice.setattr("dpgov.identity.os_user", lambda: "alice")
            record_approval(
                model=MODEL,
                version=first,
                by="alice",
                note="reviewed",
                policy=loaded,
                ledger=ledger,
                registry=registry,
            )
        promote(model=MODEL, version=first, policy=loaded, ledger=ledger, registry=registry)
        record_head(ledger)
        ledger.close()
    return World(root, home, repo, policy, version, runs, crashed.id)


@dataclass
class Clone:
    """A copy of the world a test may damage."""

    home: Path
    repo: Path
    policy: Path
    world: World

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.home / 'ledger.db'}"

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def sql(self, statement: str, **params: Any) -> None:
        """Write to the ledger database behind dpgov's back (the append-only triggers are
        dropped first: an administrator with database access can do that)."""
        import sqlite3

        with sqlite3.connect(self.home / "ledger.db") as conn:
            conn.execute("DROP TRIGGER IF EXISTS dpgov_entries_no_update")
            conn.execute("DROP TRIGGER IF EXISTS dpgov_entries_no_delete")
            conn.execute(statement, params)


@pytest.fixture
def clone(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Clone:
    home, repo = tmp_path / "home", tmp_path / "repo"
    shutil.copytree(world.home, home)
    shutil.copytree(world.repo, repo)
    monkeypatch.setenv("DPGOV_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.delenv("DPGOV_LEDGER_URL", raising=False)
    monkeypatch.delenv("DPGOV_LEDGER_HMAC_KEY", raising=False)
    monkeypatch.setenv("DPGOV_ACTOR", "auditor")
    monkeypatch.setenv("COLUMNS", "200")
    return Clone(home, repo, world.policy, world)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.out)

    def kinds(self) -> set[str]:
        return {f["kind"] for f in self.json["findings"]}


@pytest.fixture
def audit(clone: Clone, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``dpgov audit --json`` on the clone, in-process through the real entry point."""
    from dpgov.cli import main

    def run(*args: str, json_out: bool = True) -> Result:
        argv = ["dpgov", "audit", "--dvc-root", str(clone.repo)]
        argv += (["--json"] if json_out else []) + list(args)
        monkeypatch.setattr(sys, "argv", argv)
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
