"""Test blocks (issue 17): `data prepare` registers the test split's patients as blocks of
their own (split ``test``), `dpgov budget --json` lists them, and `dpgov ledger reserve` of a
training mechanism on one is refused (exit 2, one line, nothing charged); one evaluation
release (q = 1, T = 1) may be charged to it."""

from __future__ import annotations

import json

import pytest

from dpgov.data import DataParams, prepare
from dpgov.data.test_blocks import evaluation_block
from dpgov.ledger import Ledger
from dpgov.testing.sources import write_tabular
from tests.cli import run_dpgov

TRAINING = ["--noise-multiplier", "2.0", "--sample-rate", "0.05", "--steps", "10"]
RELEASE = ["--noise-multiplier", "3.0", "--sample-rate", "1", "--steps", "1"]


@pytest.fixture
def cli(monkeypatch, capsys, home):
    monkeypatch.delenv("DPGOV_PSEUDONYM_KEY", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args)

    return run


def _reservations() -> int:
    led = Ledger.open()
    try:
        return len(led.entries("reservation"))
    finally:
        led.close()


def test_test_blocks_are_listed_and_take_only_an_evaluation_release(cli, tmp_path) -> None:
    data, contract = write_tabular(tmp_path / "raw", 400, dataset="coh")
    result = prepare(data, contract, out=tmp_path / "p", params=DataParams())
    train_block = sorted(result.blocks)[0]
    test_block = evaluation_block(train_block)

    rc, out, err = cli("budget", "--dataset", "coh", "--json")
    assert rc == 0, err
    (ds,) = json.loads(out)["datasets"]
    splits = {b["block"]: b["split"] for b in ds["blocks"]}
    assert splits[train_block] == "train" and splits[test_block] == "test"
    assert sorted(b for b, s in splits.items() if s == "test") == sorted(
        evaluation_block(b) for b in result.blocks
    )
    rc, table, err = cli("budget", "--dataset", "coh")
    assert rc == 0, err
    assert test_block in table

    rc, _, err = cli("ledger", "reserve", "--dataset", "coh", "--block", test_block, *TRAINING)
    assert rc == 2
    (line,) = err.strip().splitlines()
    assert f"block {test_block!r} of dataset 'coh' is a test block" in line
    assert _reservations() == 0
    # training and a test block together: refused as well
    rc, _, _ = cli(
        "ledger", "reserve", "--dataset", "coh", "--block", train_block, "--block", test_block,
        *TRAINING,
    )  # fmt: skip
    assert rc == 2 and _reservations() == 0

    rc, out, err = cli(
        "ledger", "reserve", "--dataset", "coh", "--block", test_block, *RELEASE, "--json"
    )
    assert rc == 0, err
    assert json.loads(out)["blocks"] == [test_block]
    rc, _, err = cli("ledger", "reserve", "--dataset", "coh", "--block", train_block, *TRAINING)
    assert rc == 0, err
    assert _reservations() == 2
