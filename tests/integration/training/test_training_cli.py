"""``dpgov run`` and ``dpgov demo`` through the real entry point (in-process), as Prefect flows
on the session's one test harness, with prepared data on disk read by
``dpgov.data.load_prepared`` and validated against its contract before any budget moves."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli import run_dpgov
from tests.integration.orchestration import harness

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """The session's one Prefect test harness (shared with tests/integration/orchestration)."""
    yield from harness.session()


def _dpgov(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    return run_dpgov(monkeypatch, capsys, *args, prefect_defaults=True)


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder: validations recorded under ``data/validation`` (relative
    to the working directory, as in a DVC project) must not leak into the repository or be
    reused by another test."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def params_file(tmp_path: Path) -> Callable[..., Path]:
    """A synthetic cohort, its contract and prepared data on disk, and a params file naming
    them (data: for validation, train: for the run)."""
    from dpgov.data import prepare
    from dpgov.data.params import DataParams
    from dpgov.testing.sources import write_tabular

    source, contract = write_tabular(
        tmp_path / "raw", 500, dataset="synth", min_block=20, min_subgroup=5
    )
    prepared = prepare(
        source,
        contract,
        out=tmp_path / "prepared" / "synth",
        params=DataParams(min_block_patients=1),
        register=False,
    )

    def make(model: str = "logreg", **train: Any) -> Path:
        base = {
            "data": prepared.path,
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
        path.write_text(
            yaml.safe_dump(
                {
                    "data": {
                        "source": str(source),
                        "contract": str(contract),
                        "seed": 0,
                        "min_block_patients": 1,
                        "dataset": "synth",
                    },
                    "train": {**base, **train},
                    "model": {"name": model},
                }
            )
        )
        return path

    return make


def test_run_prints_the_summary_as_json(
    home: Path,
    prefect_api: str,
    params_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _dpgov(
        monkeypatch,
        capsys,
        "run",
        "--params",
        str(params_file()),
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["model_name"] == "cli-model" and data["model_version"] == "1"
    assert data["plan"]["data_version"].endswith(".dir")  # the DVC md5 of the folder
    per_epoch = round(1 / data["plan"]["sample_rate"])  # Opacus: q = 1/ceil(N/B)
    assert data["steps"] == data["plan"]["steps"] == 2 * per_epoch
    assert data["validation"]["ok"] and not data["validation"]["reused"]
    assert data["gate"]["model"] == "cli-model" and "approvals" in data["gate"]["failing"]
    assert data["orchestration"]["api"] == "server" and data["orchestration"]["api_url"]
    assert {"validate", "plan", "reserve", "train", "commit", "track", "gate"} <= set(
        data["timings"]
    )


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
    prefect_api: str,
    params_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    write_policy: Callable[..., Path],
) -> None:
    from dpgov.ledger import Ledger
    from dpgov.testing.policies import put_in_force

    put_in_force(write_policy(epsilon_per_block=1.0))  # the policy in force, not a file
    code, _, err = _dpgov(monkeypatch, capsys, "run", "--params", str(params_file()), "--json")
    assert code == 1
    assert err.startswith("error: budget refused for block"), err
    assert len(err.strip().splitlines()) == 1  # Prefect's own failure lines stay off the console
    assert Ledger.open().entries("reservation") == []


def test_reproducible_noise_under_the_default_policy_is_exit_1_and_charges_nothing(
    home: Path,
    prefect_api: str,
    params_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dpgov.ledger import Ledger

    params = str(params_file(reproducible_noise=True))
    code, _, err = _dpgov(monkeypatch, capsys, "run", "--params", params, "--json")
    assert code == 1
    assert "release.allow_reproducible_noise: false" in err and "nothing was charged" in err
    assert len(err.strip().splitlines()) == 1
    assert Ledger.open().entries("reservation") == []


def test_unvalidatable_data_is_exit_2_and_charges_nothing(
    home: Path,
    prefect_api: str,
    params_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Prepared data whose source the params do not name cannot be validated: no training."""
    from dpgov.ledger import Ledger

    params = yaml.safe_load(params_file().read_text())
    del params["data"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(params))
    code, _, err = _dpgov(monkeypatch, capsys, "run", "--params", str(bare), "--json")
    assert code == 2
    assert err.startswith("error: cannot validate") and len(err.strip().splitlines()) == 1
    assert Ledger.open().entries("reservation") == []


def test_demo_runs_the_whole_pipeline_on_the_bundled_data(
    home: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    pytest.importorskip("sksurv", reason="the demo data needs the demo extra")
    monkeypatch.chdir(tmp_path)  # embedded defaults: works from any directory
    code, out, err = _dpgov(monkeypatch, capsys, "demo", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["validation"]["ok"]
    assert data["data"]["prepare"]["dataset"] == "flchain"
    assert data["plan"]["dataset"] == "flchain"
    assert 0 < data["epsilon"] <= 2.0
    assert data["auroc"] > 0.75
    assert {s["attribute"] for s in data["subgroups"]} == {"sex", "age_band"}
    gate = data["gate"]  # the demo ends with the gate decision
    assert gate["model"] == "dpgov-flchain" and gate["version"] == data["model_version"]
    assert "approvals" in gate["failing"]
    blocks = ["1995", "1996", "1997", "1998-2003"]  # and each one's test block
    assert sorted(b["block"] for b in data["budgets"]) == blocks + [f"test-{b}" for b in blocks]
    # both outcomes: blocked under the packaged policy, then the release under the demo's
    # single-user release policy, recorded as `dpgov policy set` records it
    release = data["release"]
    assert release["author_may_approve"] is True and release["policy_seq"] is not None
    from dpgov.ledger import Ledger

    [entry] = [e for e in Ledger.open().entries("policy_set") if e.seq == release["policy_seq"]]
    assert entry.payload["dataset"] == "flchain" and "allow_author" in entry.payload["reason"]
    before = {c["name"]: c for c in release["gate_before"]["checks"]}
    assert before["fnr_gap:age_band"]["reason"] == "off in policy"  # shown off, reason recorded
    assert before["fnr_gap_widening:age_band"]["limit"] == 0.05  # privacy may not widen it
    assert "may approve (approvals.allow_author)" in before["approvals"]["reason"]
    if release["status"].startswith("shipped"):
        assert release["promotion"]["promoted"] and release["approval"]["ledger_seq"]
    else:  # noise can fail a check an approval cannot pass: then nothing was approved
        assert (
            release["status"].startswith("not shipped: blocked by ") and "approval" not in release
        )
    assert release["audit"]["ok"] and release["audit"]["findings"] == []
    # the demo's data is versioned with DVC and pushed: its audit finds nothing to report
    assert data["data"]["dvc"]["added"] == ["prepared/flchain"] and data["data"]["dvc"]["pushed"]
    code, out, err = _dpgov(monkeypatch, capsys, "audit", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["findings"] == []
    [found] = report["dvc"]["versions"]
    assert found["data_version"] == data["plan"]["data_version"]
    assert found["found_in"].startswith("DVC remote")
