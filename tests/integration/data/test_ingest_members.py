"""Ingest registers new blocks with their members when it is given the published folder."""

from __future__ import annotations

import pytest

from dpgov.data import DataParams, prepare
from dpgov.data.ingest import register_blocks
from dpgov.data.test_blocks import evaluation_block
from dpgov.errors import UsageError
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
from dpgov.testing.sources import write_tabular

BUDGET = Budget(epsilon_per_block=8, delta=1e-5)


def test_ingested_blocks_carry_their_members(tmp_path, dpgov_home, ledger_url) -> None:
    data, contract = write_tabular(tmp_path / "raw", 300, dataset="ing")
    result = prepare(data, contract, out=tmp_path / "p", params=DataParams(), register=False)
    led = Ledger.open(ledger_url)  # SQLite and PostgreSQL
    with pytest.raises(UsageError, match="not v-other"):
        register_blocks(
            led, dataset="ing", blocks=result.blocks, data_version="v-other", prepared=result.path
        )
    assert led.blocks("ing") == []
    added = register_blocks(
        led,
        dataset="ing",
        blocks=result.blocks,
        data_version=result.data_version,
        prepared=result.path,
    )
    # the training blocks, then their test blocks (split test, with the test patients)
    assert added == sorted(result.blocks) + sorted(evaluation_block(b) for b in result.blocks)
    statuses = led.budget(BUDGET, dataset="ing")
    assert all(s.members and s.classes == 1 and s.domain == "ing" for s in statuses)
    assert {s.block for s in statuses if s.split == "test"} == {
        evaluation_block(b) for b in result.blocks
    }
    assert sum(s.patients for s in statuses if s.split == "test") == result.n_test
    # without the folder: registered without members (conservative), as before
    legacy = register_blocks(led, dataset="ing-legacy", blocks={"a": 5}, data_version="v1")
    assert legacy == ["a"]
    assert not led.budget(BUDGET, dataset="ing-legacy")[0].members
