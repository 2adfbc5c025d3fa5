"""A training process killed outright (SIGKILL) mid-training leaves its reservation charged."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpgov.accounting import epsilon
from dpgov.ledger import Ledger
from dpgov.policy import load_policy
from tests.filter_reference import filter_eps

REPO = Path(__file__).resolve().parents[3]

SCRIPT = """
import json
import sys
from dpgov.ledger import Ledger
from dpgov.testing.policies import put_in_force
from dpgov.training.governed import RunOptions, run_governed
from dpgov.training.params import parse_params

def report(steps, loss):
    print(f"STEP {steps}", flush=True)

params = parse_params(json.loads(sys.argv[2]))
options = RunOptions(validation_out=sys.argv[3], on_step=report)
ledger = Ledger.open()
put_in_force(sys.argv[1], ledger=ledger)
run_governed(params, ledger=ledger, options=options)
print("FINISHED", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killed_run_stays_charged(dpgov_home: Path, tmp_path: Path) -> None:
    from dpgov.testing.runs import governed_data

    policy = REPO / "policies" / "default.yaml"
    # ~400 training patients (a keyed split), batch 40: ceil(n / 40) steps an epoch
    world = governed_data(tmp_path / "data", n=500, dataset="synth")
    params = world.params(
        {
            "train": {
                "epochs": 1000,
                "batch_size": 40,
                "validation_fraction": 0.0,  # the plan's steps follow from n below
                "noise_multiplier": 50.0,
                "target_epsilon": 3.0,
                "reference": False,
                "n_boot": 0,
                "device": "cpu",
            },
            "model": {"name": "logreg"},
        }
    )
    body = json.dumps(params.model_dump(mode="json"))
    validation = str(tmp_path / "validation")
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(policy), body, validation],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 150
    seen = ""
    try:
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            seen = proc.stdout.readline()
            if not seen or seen.startswith("STEP 5"):
                break
        assert seen.startswith("STEP 5"), f"training never reached step 5 (last line {seen!r})"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    ledger = Ledger.open()
    [reservation] = ledger.reservations()
    assert reservation.status == "pending"  # nobody settled it: it still counts as spent
    budget = load_policy(policy).policy.budget
    status = ledger.block_status(reservation.dataset, reservation.blocks[0], budget)
    assert status.pending == 1
    planned = filter_eps([reservation.mechanism], budget.delta, tuple(budget.orders))
    assert status.epsilon_spent == pytest.approx(planned)  # the enforced (RDP filter) figure
    fixed = epsilon([reservation.mechanism], delta=budget.delta, accountant=budget.accountant)
    assert status.epsilon_spent_fixed == pytest.approx(fixed)
    n = sum(json.loads((world.prepared / "meta.json").read_text())["blocks"].values())
    # the whole plan (1000 epochs of ceil(n / 40) steps), not the 5 steps taken
    assert reservation.mechanism.steps == 1000 * math.ceil(n / 40)
