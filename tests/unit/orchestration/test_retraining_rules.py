"""Retraining's rules without Prefect: block selection, retirement, skipping, budget rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dpgov.training.retraining import (
    budget_rows,
    default_min_remaining,
    exhausted,
    select_blocks,
)


@dataclass
class Status:
    block: str
    epsilon_spent: float
    epsilon_limit: float = 4.0
    retired: bool = False
    dataset: str = "d"
    patients: int = 100
    charges: int = 1
    pending: int = 0

    @property
    def remaining(self) -> float:
        return max(0.0, self.epsilon_limit - self.epsilon_spent)


def test_fresh_and_funded_blocks_train_exhausted_ones_retire() -> None:
    sel = select_blocks(
        dataset="d",
        data_version="v2",
        data_blocks=["2001", "2002", "2003", "2004"],
        statuses=[Status("2001", 3.9), Status("2002", 2.0), Status("2003", 1.0, retired=True)],
        min_remaining=0.5,
    )
    assert sel.train == ["2002", "2004"]  # 2004 is not registered yet: fresh budget
    assert [b for b, _ in sel.retire] == ["2001"]
    assert "remaining ε 0.100 of 4 is below 0.5" in sel.retire[0][1]
    assert sel.already_retired == ["2003"]
    assert not sel.skip


def test_nothing_to_train_is_a_skip_with_the_reason() -> None:
    sel = select_blocks(
        dataset="d",
        data_version="v3",
        data_blocks=["2001", "2002"],
        statuses=[Status("2001", 3.99), Status("2002", 1.0, retired=True)],
        min_remaining=0.5,
    )
    assert sel.skip and sel.train == []
    assert sel.skip_reason == (
        "no block of 'd' (data version v3) has at least ε 0.5 left (retired now: 2001; "
        "retired before: 2002)"
    )


def test_no_new_data_skips_before_touching_any_block() -> None:
    sel = select_blocks(
        dataset="d",
        data_version="v1",
        data_blocks=["2001"],
        statuses=[Status("2001", 3.99)],
        min_remaining=0.5,
        last_trained_version="v1",
        require_new_data=True,
    )
    assert sel.skip and sel.retire == []
    assert "no new data" in str(sel.skip_reason)
    again = select_blocks(
        dataset="d",
        data_version="v2",
        data_blocks=["2001"],
        statuses=[Status("2001", 1.0)],
        min_remaining=0.5,
        last_trained_version="v1",
        require_new_data=True,
    )
    assert again.train == ["2001"]


def test_retirement_rule_and_default_floor() -> None:
    assert default_min_remaining(2.0) == 0.5
    assert exhausted(Status("a", 3.5), 0.5) is None  # exactly the floor still trains
    assert exhausted(Status("a", 3.6), 0.5) is not None
    assert exhausted(Status("a", 3.9, retired=True), 0.5) is None  # already retired


def test_budget_rows_round_spent_up_and_remaining_down() -> None:
    (row,) = budget_rows([Status("2001", 1.23401, epsilon_limit=2.0)])
    assert row["epsilon_spent"] == 1.235
    assert row["remaining"] == 0.765
    assert row["state"] == "active"


def test_ledger_side_retire_skip_and_last_version(tmp_path: Path) -> None:
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger
    from dpgov.policy.schema import Budget
    from dpgov.training import retraining

    led = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    budget = Budget(epsilon_per_block=4.0, delta=1e-5, accountant="pld")
    led.add_block(dataset="d", block="2001", patients=100, data_version="v1")
    assert retraining.last_trained_version(led, "d") is None
    # σ = 2: fits the budget of 4 under the default (adaptive) rule, the RDP filter's ε ≈ 1.42
    mech = DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.1, steps=10)
    released = led.reserve(
        dataset="d", blocks=["2001"], mechanism=mech, budget=budget, data_version="v0"
    )
    led.release(released.id)
    assert retraining.last_trained_version(led, "d") is None  # nothing ran
    res = led.reserve(
        dataset="d", blocks=["2001"], mechanism=mech, budget=budget, data_version="v1"
    )
    led.commit(res.id)
    assert retraining.last_trained_version(led, "d") == "v1"

    sel = retraining.Selection(
        dataset="d",
        data_version="v1",
        train=[],
        retire=[("2001", "exhausted: test")],
        skip_reason="nothing left",
    )
    (entry,) = retraining.retire(led, dataset="d", retire=sel.retire)
    assert entry.kind == "block_retired" and led.blocks("d")[0].retired
    skip = retraining.record_skip(led, sel)
    assert skip.kind == "retraining_skipped"
    assert skip.payload["reason"] == "nothing left" and skip.payload["retired"] == ["2001"]
    assert led.verify().ok


def test_params_for_sets_blocks_and_data() -> None:
    from dpgov.training.params import parse_params
    from dpgov.training.retraining import Selection, params_for

    base = parse_params({"train": {"epochs": 1}})
    out = params_for(base, Selection(dataset="d", data_version="v", train=["b"]), "/data/x")
    assert out.train.blocks == ["b"] and out.train.data == "/data/x" and out.train.epochs == 1


@pytest.mark.parametrize("n", [0, 5])
def test_plan_waves_bad_counts(n: int) -> None:
    from dpgov.data.ingest import plan_waves
    from dpgov.errors import UsageError

    with pytest.raises(UsageError):
        plan_waves([("a", 1), ("b", 1), ("c", 1), ("d", 1)], n)
