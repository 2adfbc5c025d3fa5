"""Own data through the documented command line, in a temporary git repository with real DVC:
``dpgov data prepare --data FILE --contract C`` records the prepared folder in DVC (``dvc add``,
its ``.dvc`` file not git-ignored) and pushes it to the remote in $DPGOV_HOME; ``dpgov run`` then
trains on it, and the audit's data-version check finds the version every charge names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipelines import dvc_stage
from tests.cli import run_dpgov
from tests.integration.orchestration import harness

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    yield from harness.session()


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def clone(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What a fresh clone holds of the pipeline: git + DVC, the project's ignore rules and DVC
    config, and a team's own cohort with its contract under data/raw/."""
    from dpgov.testing.sources import write_tabular

    repo = tmp_path / "clone"
    repo.mkdir()
    assert git(repo, "init", "-q").returncode == 0
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True, capture_output=True)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(  # a dependency of the prepare stage
        REPO / "src" / "dpgov" / "data",
        repo / "src" / "dpgov" / "data",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    write_tabular(repo / "data" / "raw", 500, dataset="cohort", min_block=20, min_subgroup=5)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(
        dataset="cohort",
        source="data/raw/cohort.csv",
        contract="data/raw/cohort.yaml",
        min_block_patients=1,
    )
    params["train"].update(
        epochs=2,
        batch_size=30,
        n_boot=0,
        reference=False,
        min_group_n=10,
        noise_multiplier=1.5,
        target_epsilon=3.0,
        device="cpu",
        model_name="dpgov-cohort",
    )
    params["model"] = {"name": "logreg"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(repo)
    return repo


PREPARE_OWN = ("data", "prepare", "--data", "data/raw/cohort.csv", "--contract")


def test_prepare_then_run_on_own_data_audits_its_data_version(
    clone: Path,
    home: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """params.yaml names the team's dataset, so its folder is the prepare stage's output:
    prepare commits the stage (dvc.lock) and pushes it; run and audit follow."""
    args = (*PREPARE_OWN, "data/raw/cohort.yaml", "--json")
    code, out, err = run_dpgov(monkeypatch, capsys, *args)
    assert code == 0, err
    prepared = json.loads(out)
    version = prepared["data_version"]
    assert prepared["dvc"]["how"] == "dvc commit prepare" and prepared["dvc"]["pushed"] > 0
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["outs"][0]["md5"] == version
    remote = home / "dvc-remote" / "files" / "md5" / version[:2] / version[2:]
    assert remote.is_file()  # pushed where `dpgov audit` looks on any machine of this home

    code, out, err = run_dpgov(monkeypatch, capsys, "run", "--json", prefect_defaults=True)
    assert code == 0, err
    run = json.loads(out)
    assert run["plan"]["data_version"] == version
    # dvc.yaml's evaluate stage on this real summary: metrics and ids, no model file
    (clone / "runs").mkdir()
    (clone / "runs" / "run.json").write_text(out)
    assert dvc_stage.main(["evaluate", "runs/run.json"]) == 0
    metrics = json.loads((clone / "metrics" / "governed.json").read_text())
    assert metrics["epsilon"] == run["epsilon"] and metrics["auroc"] == run["auroc"]
    ids = json.loads((clone / "runs" / "ids.json").read_text())
    assert (ids["run_id"], ids["reservation"]) == (run["run_id"], run["reservation"])

    code, out, err = run_dpgov(monkeypatch, capsys, "audit", "--json")
    report = json.loads(out)
    kinds = {f["kind"] for f in report["findings"]}
    assert not kinds & {"data_version_unknown", "data_version_missing"}, report["findings"]
    assert report["dvc"]["versions"] == [
        {"data_version": version, "found_in": "dvc.lock: data/prepared/cohort", "reservations": 1}
    ]

    # another machine of this home: no dvc.lock, no cache; the remote alone holds the version
    (clone / "dvc.lock").unlink()
    shutil.rmtree(clone / ".dvc" / "cache")
    code, out, err = run_dpgov(monkeypatch, capsys, "audit", "--json")
    again = json.loads(out)
    assert not {f["kind"] for f in again["findings"]} & {"data_version_unknown"}
    where = f"DVC remote {(home / 'dvc-remote').resolve()}"
    assert [v["found_in"] for v in again["dvc"]["versions"]] == [where]


def test_prepare_of_another_dataset_adds_a_dvc_file_git_can_track(
    clone: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder no stage writes is recorded with `dvc add`; the project's .gitignore ignores
    the data but not the .dvc file (DVC refuses a git-ignored one)."""
    args = (*PREPARE_OWN, "data/raw/cohort.yaml", "--dataset", "cohort-b", "--json")
    code, out, err = run_dpgov(monkeypatch, capsys, *args)
    assert code == 0, err
    prepared = json.loads(out)
    assert prepared["dvc"]["how"] == "dvc add" and prepared["dvc"]["pushed"] > 0
    dvc_file = clone / "data" / "prepared" / "cohort-b.dvc"
    assert yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"] == prepared["data_version"]
    assert git(clone, "check-ignore", "-q", "data/prepared/cohort-b.dvc").returncode == 1
    assert git(clone, "check-ignore", "-q", "data/prepared/cohort-b/meta.json").returncode == 0
    assert prepared["dvc"]["to_git"] == ["data/prepared/cohort-b.dvc"]
    assert git(clone, "add", *prepared["dvc"]["to_git"]).returncode == 0
    assert "recorded in DVC (dvc add" in run_dpgov(monkeypatch, capsys, *args[:-1])[1]


def test_prepare_inside_dvc_repro_leaves_recording_to_dvc(
    clone: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DVC_STAGE", "prepare")  # what DVC sets for a stage's command
    code, out, err = run_dpgov(monkeypatch, capsys, "data", "prepare", "--json")
    assert code == 0, err
    assert json.loads(out)["dvc"]["how"] == "dvc stage prepare"
    assert not (clone / "data" / "prepared" / "cohort.dvc").exists()
    assert not (clone / "dvc.lock").exists()


def test_prepare_outside_a_dvc_repository_says_the_version_is_not_recorded(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "plain"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run_dpgov(monkeypatch, capsys, "data", "prepare")
    assert code == 0, err
    assert "not recorded in DVC: no DVC repository" in out
    assert "`dpgov audit` will report it unknown" in out
