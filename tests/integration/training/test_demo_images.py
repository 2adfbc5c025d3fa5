"""``dpgov demo --images`` through the real entry point (in-process), on the session's one
Prefect harness (shared with the other CLI and orchestration tests): a generated imaging
cohort, patient-level DP-SGD charged to the ledger, and the gate. The cohort is shrunk here
(the demo's own: 1,400 images of 16x16) so the test adds seconds, not minutes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import run_dpgov
from tests.integration.orchestration import harness


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    yield from harness.session()


def test_demo_images_trains_patient_level_and_gates(
    home: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    import pipelines.demo as demo
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger

    monkeypatch.setattr(
        demo, "IMAGES_COHORT", {"n_train": 240, "n_val": 40, "n_test": 120, "size": 8, "seed": 0}
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = run_dpgov(
        monkeypatch, capsys, "demo", "--images", "--json", prefect_defaults=True
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["generated"] is True and "generated" in data["cohort"]
    assert data["unit_of_privacy"] == "patient" and data["patient_level"] is True
    assert data["max_records_per_patient"] == 4
    plan = data["plan"]
    assert plan["n_train_patients"] < plan["n_train_records"]  # several images for some
    gate = data["gate"]
    assert gate["model"] == "dpgov-imaging-demo" and "approvals" in gate["failing"]
    [commit] = Ledger.open().entries("commit")
    charged = DpSgdMechanism.from_dict(commit.payload["mechanism"])
    assert charged.sample_rate == plan["sample_rate"]  # q over patients, as planned
    assert charged.steps == data["steps"]


def test_demo_images_refuses_waves(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_dpgov(monkeypatch, capsys, "demo", "--images", "--waves", "2")
    assert code == 2 and "--images" in err and len(err.strip().splitlines()) == 1
