"""`dpgov ledger reserve` refuses δ >= 1/n, n the distinct patients of the blocks it charges
(the union: the run trains on all of them), as the gate's delta_vs_patients check would at the
release: exit 1, one line, nothing charged."""

from __future__ import annotations

import json

import pytest

from dpgov.data import DataParams, prepare
from dpgov.ledger import Ledger
from dpgov.testing.policies import put_in_force, write_policy
from dpgov.testing.sources import write_tabular
from tests.cli import run_dpgov

RUN = ["--noise-multiplier", "2.0", "--sample-rate", "0.01", "--steps", "10"]


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


def test_a_block_larger_than_one_over_delta_is_refused(cli) -> None:
    # the packaged policy: δ = 1e-5, so 100,000 patients or more are refused
    for block, n in (("big", 200_000), ("small", 50_000)):
        rc, _, err = cli(
            "ledger", "add-block", "--dataset", "d", "--block", block, "--patients", str(n)
        )
        assert rc == 0, err
    rc, _, err = cli("ledger", "reserve", "--dataset", "d", "--block", "big", *RUN)
    assert rc == 1
    (line,) = err.strip().splitlines()
    assert "δ=1e-05 >= 1/200000 patients" in line and "nothing charged" in line
    assert _reservations() == 0
    rc, _, err = cli("ledger", "reserve", "--dataset", "d", "--block", "small", *RUN)
    assert rc == 0, err
    assert _reservations() == 1


def test_the_union_of_the_blocks_counts_not_the_smallest(cli, tmp_path) -> None:
    data, contract = write_tabular(tmp_path / "raw", 400, dataset="coh")
    result = prepare(data, contract, out=tmp_path / "p", params=DataParams())
    sizes = result.blocks
    small = min(sizes, key=sizes.get)
    other = max(sizes, key=sizes.get)
    union = sizes[small] + sizes[other]  # one block per year: disjoint patients
    delta = 1.0 / union  # not below 1/union, but below 1/(the smaller block)
    assert delta < 1.0 / sizes[small]
    put_in_force(write_policy(tmp_path / "p.yaml", budget={"delta": delta}), dataset="coh")

    rc, _, err = cli(
        "ledger", "reserve", "--dataset", "coh", "--block", small, "--block", other, *RUN
    )
    assert rc == 1 and f">= 1/{union} patients" in err, err
    assert _reservations() == 0
    rc, text, err = cli("ledger", "reserve", "--dataset", "coh", "--block", small, *RUN, "--json")
    assert rc == 0, err
    assert json.loads(text)["blocks"] == [small]

    # the policy may turn the check off, as it does the gate's
    off = write_policy(
        tmp_path / "off.yaml",
        budget={"delta": delta},
        release={"delta_below_inverse_patients": False},
    )
    put_in_force(off, dataset="coh")
    rc, _, err = cli(
        "ledger", "reserve", "--dataset", "coh", "--block", small, "--block", other, *RUN
    )
    assert rc == 0, err
