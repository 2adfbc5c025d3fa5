"""``dpgov demo --waves 3``: the bundled cohort in three enrollment waves, each ingested (DVC,
git) and followed by retraining; early blocks spend down and retire, newer blocks carry the
later models. The embedded params (10 epochs), without the reference model and intervals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_three_waves_spend_down_retire_and_move_on(
    prefect_api: str,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("sksurv", reason="the bundled data needs the demo extra")
    from dpgov.cli.run import _render_waves
    from dpgov.ledger import Ledger
    from pipelines.demo import WAVES_DATASET, demo_waves

    out = demo_waves(
        home=str(home / "demo"),
        waves=3,
        train={"n_boot": 0, "reference": False},
    )
    waves = out["waves"]
    assert [w["ingest"]["new_blocks"] for w in waves] == [["1995", "1996"], ["1997"], ["1998-2003"]]
    assert all(w["retraining"]["status"] == "trained" for w in waves)
    runs = [w["retraining"]["run"] for w in waves]
    # Under the default rule (the RDP filter, valid under adaptive retraining) one model at the
    # target spends most of a block's 2.6: each block carries one model, then retires, and the
    # newer blocks carry the later models.
    assert [r["plan"]["blocks"] for r in runs] == [["1995", "1996"], ["1997"], ["1998-2003"]]
    assert all(r["epsilon"] <= 2.0 for r in runs)  # the run's own target
    retired = [[x["block"] for x in w["retraining"]["selection"]["retire"]] for w in waves]
    assert retired == [[], ["1995", "1996"], ["1997"]]

    budgets = waves[2]["retraining"]["budgets"]
    # the training blocks (their test blocks, test-<block>, hold no charge: exact evaluation)
    final = {b["block"]: b for b in budgets if not b["block"].startswith("test-")}
    assert all(b["charges"] == 0 for b in budgets if b["block"].startswith("test-"))
    assert {k for k, b in final.items() if b["state"] == "retired"} == {"1995", "1996", "1997"}
    assert all(b["charges"] == 1 for b in final.values())
    assert all(b["epsilon_spent"] <= out["epsilon_per_block"] for b in final.values())
    assert out["gate"]["model"] == "dpgov-flchain-waves"

    repo = Path(out["folder"]) / "repo"
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert log.count("dpgov ingest flchain-wave") == 3
    led = Ledger.open()
    assert {b.block for b in led.blocks(WAVES_DATASET) if b.retired} == {"1995", "1996", "1997"}
    assert led.verify().ok
    from dpgov.gate.in_force import record_in_force

    scenario = record_in_force(led, WAVES_DATASET)  # set on the ledger, not passed as a file
    assert scenario.seq and scenario.dataset == WAVES_DATASET
    assert scenario.loaded.policy.budget.epsilon_per_block == out["epsilon_per_block"]
    assert {e.payload["policy_sha256"] for e in led.entries("reservation")} == {scenario.sha256}

    monkeypatch.setenv("COLUMNS", "200")
    _render_waves({**out, "orchestration": {}})  # what `dpgov demo --waves 3` prints
    shown = capsys.readouterr().out
    assert "after wave 3" in shown and "(1) R" in shown and "gate: dpgov-flchain-waves" in shown
