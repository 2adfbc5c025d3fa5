"""The project's dvc.yaml with real DVC: four stages (prepare, validate, train, evaluate) in
one chain, `dvc exp` sees the evaluate stage's metrics file, and no stage writes a model file
(a model leaves only through the gate). The evaluate stage turns a `dpgov run --json` summary
into the metrics and ids files. A whole `dvc exp run` (a governed run) is covered by
test_own_data_route's `dpgov run` plus the stage script; it takes 1.5 min here, so it is not
repeated under DVC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.dvc_stage import main, stage_outputs

REPO = Path(__file__).resolve().parents[3]
DVC = str(Path(sys.executable).parent / "dvc")


def dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([DVC, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_stages_chain_and_write_no_model_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, repo / name)
    listed = dvc(repo, "stage", "list")
    assert [line.split()[0] for line in listed.splitlines()] == [
        "prepare",
        "validate",
        "train",
        "evaluate",
    ]
    assert "Reports metrics/governed.json" in listed
    dot = dvc(repo, "dag", "--dot")
    for edge in ("prepare", "validate"), ("validate", "train"), ("train", "evaluate"):
        assert f'"{edge[0]}" -> "{edge[1]}"' in dot, dot
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("train", "evaluate"):
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages[name].get("outs", [])]
        outs += [next(iter(m)) for m in stages[name].get("metrics", [])]
        assert all(o.endswith(".json") and o.startswith(("runs/", "metrics/")) for o in outs)


def test_evaluate_stage_writes_metrics_and_ids(tmp_path: Path, monkeypatch) -> None:
    summary = {
        "plan": {
            "delta": 1e-5,
            "noise_multiplier": 1.1,
            "sample_rate": 0.05,
            "dataset": "cohort",
            "blocks": ["2001"],
            "data_version": "a" * 32 + ".dir",
        },
        "epsilon": 1.97,
        "auroc": 0.74,
        "reference_auroc": None,
        "steps": 13,
        "run_id": "r1",
        "model_name": "m",
        "model_version": "3",
        "reservation": "res-1",
        "ledger_entries": [6, 7],
        "reference_run_id": None,
        "gate": {"allowed": False, "failing": ["approvals"]},
    }
    metrics, ids = stage_outputs(summary)
    assert metrics == {
        "epsilon": 1.97,
        "delta": 1e-5,
        "auroc": 0.74,
        "noise_multiplier": 1.1,
        "sample_rate": 0.05,
        "steps": 13,
        "gate_allowed": 0,
        "gate_failing": 1,
    }
    assert (ids["run_id"], ids["model_version"], ids["reservation"]) == ("r1", "3", "res-1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps(summary))
    assert main(["evaluate", "run.json"]) == 0
    assert json.loads((tmp_path / "metrics" / "governed.json").read_text()) == metrics
    assert json.loads((tmp_path / "runs" / "ids.json").read_text())["data_version"].endswith(".dir")
    (tmp_path / "bad.json").write_text("{}")
    assert main(["evaluate", "bad.json"]) == 2
