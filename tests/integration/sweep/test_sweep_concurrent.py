"""Trials are reserved one by one, so the up-front check is re-verified as the sweep goes: a
run charged to the same blocks meanwhile stops the sweep, which reports what ran and what it
charged (each finished trial stays charged)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# With q = 0.1 and T = 20: the sweep ε = 1, 3 composes to ≈ 3.10 (tight PLD); trial 1 and
# this foreign run compose to ≈ 3.70; adding trial 2 gives ≈ 4.44. Under a limit of 4.0 the
# sweep fits when checked, the foreign run is accepted after trial 1, and trial 2 no longer
# fits. The figures are tight PLD, so the policy is `budget.composition: fixed`: the sweep
# records its trials as a committed schedule, and the foreign run is committed as its own.
LIMIT = 4.0


@pytest.mark.parametrize("when", ["done", "reserve"])
def test_a_concurrent_charge_stops_the_sweep_and_it_reports_what_ran(
    when: str,
    home: Path,
    data: Any,
    params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger
    from dpgov.testing.policies import put_in_force
    from dpgov.tracking import runs, sweep_runs
    from dpgov.training.sweep import Trial, plan_sweep, run_sweep

    ledger = Ledger.open()
    policy = put_in_force(write_policy(epsilon_per_block=LIMIT, composition="fixed"), ledger=ledger)
    sp = plan_sweep(params(), policy, data, ledger=ledger, epsilons=[1.0, 3.0], seeds=1)
    assert sp.fits and len(sp.trials) == 2
    foreign: list[str] = []

    def intervene(event: str, trial: Trial) -> None:
        # "done" after trial 1: the sweep's own re-check sees it before reserving trial 2;
        # "reserve" of trial 2: it lands after that re-check, and the reservation refuses.
        due = (event, trial.index) == (("done", 1) if when == "done" else ("reserve", 2))
        if due:
            other = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.1, steps=20)
            ledger.plan_schedule(
                dataset="synth", blocks=["2001"], runs=[other], budget=policy.policy.budget
            )
            r = ledger.reserve(
                dataset="synth", blocks=["2001"], mechanism=other, budget=policy.policy.budget
            )
            foreign.append(r.id)

    result = run_sweep(sp, ledger=ledger, on_trial=intervene)

    assert foreign, "the concurrent run was not charged"
    assert not result.complete and result.stopped is not None
    if when == "done":
        assert "before trial 2/2 (ε=3, seed 0)" in result.stopped
        assert "made outside the sweep" in result.stopped and foreign[0] in result.stopped
    else:
        assert "at trial 2/2 (ε=3, seed 0): its reservation was refused" in result.stopped
        assert "budget refused for block '2001'" in result.stopped
    report = result.to_dict()
    assert report["trials_run"] == [1] and report["trials_not_run"] == [2]
    assert [c["trial"] for c in report["charged"]] == [1]

    # what was charged: the sweep's trial 1 (committed) and the foreign run, nothing else
    mine = report["charged"][0]["reservation"]
    held = {r.id: r.status for r in ledger.reservations()}
    assert held == {mine: "committed", foreign[0]: "pending"}
    assert ledger.block_status("synth", "2001", policy.policy.budget).epsilon_spent <= LIMIT

    # MLflow: the parent is marked KILLED with the reason; trial 1 and the reference ran
    parent = runs.read_run(result.parent_run_id)
    assert parent["status"] == "KILLED"
    assert parent["tags"]["dpgov.sweep.stopped"] == result.stopped
    children = sweep_runs.children(result.parent_run_id)
    assert sorted(c["tags"]["dpgov.sweep.trial"] for c in children) == ["1", "reference"]
    assert result.folder is not None and (result.folder / "summary.csv").exists()
