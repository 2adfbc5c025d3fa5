"""Prepare registers each block in the real ledger (SQLite and PostgreSQL), idempotently, and
a conflicting preparation changes neither the ledger nor the prepared output."""

from __future__ import annotations

import pytest

from dpgov.data import DataParams, data_version, load_prepared, prepare
from dpgov.data.test_blocks import evaluation_block
from dpgov.errors import UsageError
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
from dpgov.testing.sources import write_tabular


@pytest.fixture
def raw(tmp_path):
    return write_tabular(tmp_path / "raw", 300, dataset="cohort")


def test_prepare_registers_every_block_with_its_training_patients(
    raw, tmp_path, ledger_url
) -> None:
    data, contract = raw
    result = prepare(data, contract, out=tmp_path / "p", ledger_url=ledger_url)
    led = Ledger.open(ledger_url)
    blocks = {b.block: b for b in led.blocks("cohort")}
    test = {
        evaluation_block(b): n for b, n in load_prepared(tmp_path / "p").meta["test_blocks"].items()
    }
    assert {k: v.patients for k, v in blocks.items()} == {**result.blocks, **test}
    assert {b.data_version for b in blocks.values()} == {result.data_version}
    assert sorted(result.registered) == sorted([*result.blocks, *test])
    # each block's split as `dpgov budget --json` shows it: train for training, test for test
    splits = {
        s.block: s.split
        for s in led.budget(Budget(epsilon_per_block=10.0, delta=1e-5), dataset="cohort")
    }
    assert splits == {**dict.fromkeys(result.blocks, "train"), **dict.fromkeys(test, "test")}
    assert sum(test.values()) == result.n_test


def test_preparing_the_same_data_again_registers_nothing_new(raw, tmp_path, ledger_url) -> None:
    data, contract = raw
    prepare(data, contract, out=tmp_path / "p", ledger_url=ledger_url)
    seq_before = Ledger.open(ledger_url).head()[0]
    again = prepare(data, contract, out=tmp_path / "p", ledger_url=ledger_url)
    assert again.registered == []
    assert Ledger.open(ledger_url).head()[0] == seq_before


def test_other_patients_in_a_registered_block_are_refused_and_nothing_changes(
    raw, tmp_path, ledger_url
) -> None:
    data, contract = raw
    first = prepare(data, contract, out=tmp_path / "p", ledger_url=ledger_url)
    seq_before = Ledger.open(ledger_url).head()[0]
    with pytest.raises(
        UsageError,
        match=r"block '\d+' is registered in the ledger with \d+ "
        r"patients, this preparation gives \d+",
    ):
        prepare(
            data,
            contract,
            out=tmp_path / "p",
            ledger_url=ledger_url,
            params=DataParams(test_fraction=0.5),
        )
    assert Ledger.open(ledger_url).head()[0] == seq_before
    assert data_version(tmp_path / "p") == first.data_version
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []  # no temp left


def test_no_register_leaves_the_ledger_alone(raw, tmp_path, ledger_url) -> None:
    data, contract = raw
    prepare(data, contract, out=tmp_path / "p", ledger_url=ledger_url, register=False)
    assert Ledger.open(ledger_url).blocks("cohort") == []
