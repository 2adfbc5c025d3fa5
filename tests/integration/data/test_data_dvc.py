"""Real DVC in a temporary git repository: ``dvc repro`` of the project's dvc.yaml from a
fresh checkout, dvc.lock's md5 equal to ``data_version()``, push to and pull from the local
remote in $DPGOV_HOME; ``dvc add`` agreeing with ``data_version()`` on image outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpgov.data import data_version
from dpgov.data.versioning import lock_md5

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def sh(cwd: Path, *cmd: str, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture
def env(dpgov_home: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}",
        DPGOV_HOME=str(dpgov_home),
        DVC_NO_ANALYTICS="1",
        GX_ANALYTICS_ENABLED="false",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    e.pop("DPGOV_LEDGER_URL", None)
    return e


@pytest.fixture
def checkout(tmp_path: Path, env: dict[str, str]) -> Path:
    """What a fresh clone holds of the data pipeline: a git + DVC repository."""
    repo = tmp_path / "repo"
    repo.mkdir()
    sh(repo, "git", "init", "-q", env=env)
    sh(repo, str(BIN / "dvc"), "init", "-q", env=env)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "contracts", repo / "contracts")
    (repo / "policies").mkdir()
    shutil.copy(REPO / "policies" / "default.yaml", repo / "policies" / "default.yaml")
    shutil.copytree(
        REPO / "src" / "dpgov" / "data",
        repo / "src" / "dpgov" / "data",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return repo


def test_dvc_repro_from_a_fresh_checkout_records_the_data_version(
    checkout, env, dpgov_home
) -> None:
    out = sh(checkout, str(BIN / "dvc"), "repro", "validate", env=env)  # the data stages
    assert "Running stage 'prepare'" in out and "Running stage 'validate'" in out
    prepared = checkout / "data" / "prepared" / "flchain"
    lock = yaml.safe_load((checkout / "dvc.lock").read_text())
    recorded = next(
        o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared/flchain"
    )
    assert recorded == data_version(prepared) == lock_md5(prepared)
    assert (checkout / "data" / "validation" / "flchain" / "result.json").is_file()
    assert "up to date" in sh(checkout, str(BIN / "dvc"), "status", "validate", env=env)

    # the default remote is the folder in $DPGOV_HOME (set per machine in .dvc/config.local)
    sh(checkout, str(BIN / "dvc"), "push", env=env)
    assert (dpgov_home / "dvc-remote").is_dir()
    shutil.rmtree(checkout / "data" / "prepared")
    shutil.rmtree(checkout / ".dvc" / "cache")
    sh(checkout, str(BIN / "dvc"), "pull", env=env)
    assert data_version(prepared) == recorded


def test_data_version_equals_dvc_add_on_image_outputs(checkout, env, tmp_path) -> None:
    from dpgov.data import prepare
    from dpgov.testing.sources import write_images

    npz, contract, meta = write_images(tmp_path / "raw", n_train=20, n_val=5, n_test=10)
    result = prepare(npz, contract, metadata=meta, out=checkout / "images", register=False)
    sh(checkout, str(BIN / "dvc"), "add", "images", env=env)
    recorded = yaml.safe_load((checkout / "images.dvc").read_text())["outs"][0]["md5"]
    assert recorded == result.data_version == data_version(checkout / "images")
