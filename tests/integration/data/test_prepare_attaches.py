"""Preparing again over a ledger whose blocks were registered without members (an older
ledger) attaches the members of the same data version; another version leaves them
conservative, and nothing is refused."""

from __future__ import annotations

from dpgov.data import DataParams, prepare
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
from dpgov.testing.sources import write_tabular

BUDGET = Budget(epsilon_per_block=8, delta=1e-5)
PARAMS = DataParams()


def test_prepare_attaches_members_to_blocks_registered_without_them(tmp_path, dpgov_home) -> None:
    data, contract = write_tabular(tmp_path / "raw", 300, dataset="old")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = prepare(data, contract, out=tmp_path / "p", params=PARAMS, register=False)
    led = Ledger.open(url)
    led.add_block(dataset="old", block="2001", patients=first.blocks["2001"],
                  data_version=first.data_version)  # fmt: skip
    led.add_block(dataset="old", block="2002", patients=first.blocks["2002"],
                  data_version="an-older-version")  # fmt: skip
    again = prepare(data, contract, out=tmp_path / "p", params=PARAMS, ledger_url=url)
    assert again.data_version == first.data_version
    # the new training blocks, and every test block (none were registered)
    assert again.registered == ["2003", "2004", *(f"test-{b}" for b in sorted(first.blocks))]
    status = {s.block: s for s in led.budget(BUDGET, dataset="old")}
    assert status["2001"].members and status["2001"].classes == 1
    assert not status["2002"].members  # another data version: stays conservative
    assert [e.payload["block"] for e in led.entries("members_attached")] == ["2001"]
