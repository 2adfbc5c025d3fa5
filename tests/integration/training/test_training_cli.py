"""``dpgov run`` and ``dpgov demo`` through the real entry point (in-process), with prepared
data on disk read by ``dpgov.data.load_prepared``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


def _dpgov(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    from dpgov.cli import main

    monkeypatch.setattr(sys, "argv", ["dpgov", *args])
    code = 0
    try:
        main()
    except SystemExit as err:
        code = int(err.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def params_file(tmp_path: Path) -> Callable[..., Path]:
    """Synthetic prepared data on disk and a params file pointing at it."""
    from dpgov.training.synthetic import make_tabular, write_prepared

    folder = write_prepared(
        make_tabular(n_train=300, n_test=200, blocks=2), tmp_path / "prepared" / "synth"
    )

    def make(model: str = "logreg", **train: Any) -> Path:
        base = {
            "data": str(folder),
            "epochs": 2,
            "batch_size": 30,
            "n_boot": 0,
            "reference": False,
            "min_group_n": 10,
            "noise_multiplier": 1.5,
            "target_epsilon": 3.0,
            "device": "cpu",
            "model_name": "cli-model",
        }
        path = tmp_path / f"params-{len(list(tmp_path.glob('params-*')))}.yaml"
        path.write_text(yaml.safe_dump({"train": {**base, **train}, "model": {"name": model}}))
        return path

    return make


def test_run_prints_the_summary_as_json(
    home: Path,
    params_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _dpgov(
        monkeypatch,
        capsys,
        "run",
        "--params",
        str(params_file()),
        "--policy",
        str(REPO / "policies" / "default.yaml"),
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["model_name"] == "cli-model" and data["model_version"] == "1"
    assert data["plan"]["data_version"].endswith(".dir")  # the DVC md5 of the folder
    assert data["steps"] == data["plan"]["steps"] == 20


def test_unknown_model_is_one_line_and_exit_2(
    home: Path,
    params_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _dpgov(monkeypatch, capsys, "run", "--params", str(params_file("vit")))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "model.name: unknown model 'vit'; known: cnn, logreg, mlp" in err


def test_refused_budget_is_exit_1_and_charges_nothing(
    home: Path,
    params_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    write_policy: Callable[..., Path],
) -> None:
    from dpgov.ledger import Ledger

    policy = str(write_policy(epsilon_per_block=1.0))
    code, _, err = _dpgov(
        monkeypatch, capsys, "run", "--params", str(params_file()), "--policy", policy
    )
    assert code == 1
    assert err.startswith("error: budget refused for block")
    assert Ledger.open().entries("reservation") == []


def test_demo_runs_the_whole_pipeline_on_the_bundled_data(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    pytest.importorskip("sksurv", reason="the demo data needs the demo extra")
    monkeypatch.chdir(tmp_path)  # embedded defaults: works from any directory
    code, out, err = _dpgov(monkeypatch, capsys, "demo", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["data"]["validate"]["ok"]
    assert data["plan"]["dataset"] == "flchain"
    assert 0 < data["epsilon"] <= 2.0
    assert data["auroc"] > 0.75
    assert {s["attribute"] for s in data["subgroups"]} == {"sex", "age_band"}
