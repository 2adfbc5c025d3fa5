"""The audit's membership check (issue 15) on a real SQLite ledger, through `dpgov audit`:
a membership edited with plain SQL, patients over a limit counted, the classes recomputed."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
import yaml

from dpgov import config
from dpgov.data import DataParams, prepare
from dpgov.testing.sources import tabular_contract, write_tabular, write_yaml
from tests.cli import run_dpgov
from tests.conftest import REPO

# ε ≈ 6.41 at δ = 1e-5 under the packaged policy's adaptive composition (the RDP filter over
# its orders; 4.0 by tight PLD): under the packaged limit 8, over a limit of 5
HEAVY = ["--noise-multiplier", "0.85", "--sample-rate", "0.02", "--steps", "500"]


@pytest.fixture
def cli(monkeypatch, capsys, home):
    monkeypatch.delenv("DPGOV_PSEUDONYM_KEY", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args)

    return run


@pytest.fixture
def charged(cli, tmp_path):
    """Two groupings of the same patients (dataset `a`: a block per year; `b`: the years
    2001-2002 as one block), one heavy charge on a/2001."""
    data, contract = write_tabular(tmp_path / "raw", 300, dataset="dom")
    grouped = write_yaml(tabular_contract("dom", edges=[2003]), tmp_path / "raw" / "grouped.yaml")
    a = prepare(data, contract, dataset="a", out=tmp_path / "a", params=DataParams())
    b = prepare(data, grouped, dataset="b", out=tmp_path / "b", params=DataParams())
    assert sorted(b.blocks) == ["1990-2002", "2003-2100"]  # 2001-2002 as one block
    rc, _, err = cli("ledger", "reserve", "--dataset", "a", "--block", "2001", *HEAVY)
    assert rc == 0, err
    return a, b


def _audit(cli) -> list[dict]:
    rc, text, err = cli("audit", "--json")
    assert rc in (0, 1), err
    return json.loads(text)["findings"]


def test_a_clean_ledger_has_no_membership_finding(cli, charged) -> None:
    found = _audit(cli)
    kinds = {f["kind"] for f in found}
    assert not kinds & {"epsilon_mismatch", "projection_mismatch", "block_over_budget"}, found


def test_a_membership_edited_with_sql_is_found(cli, charged) -> None:
    url = config.ledger_url()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        blob = conn.execute(
            sa.text("SELECT members FROM dpgov_members WHERE dataset='a' AND block='2002'")
        ).scalar_one()
        edited = bytes(blob)[:-10] + bytes(10)  # one patient swapped for another
        conn.execute(
            sa.text("UPDATE dpgov_members SET members=:m WHERE dataset='a' AND block='2002'"),
            {"m": edited},
        )
    engine.dispose()
    found = _audit(cli)
    edited_rows = [
        f for f in found if f["kind"] == "projection_mismatch" and f.get("table") == "dpgov_members"
    ]
    assert [(f["dataset"], f["block"]) for f in edited_rows] == [("a", "2002")]
    assert "edited outside the ledger" in edited_rows[0]["detail"]
    # nothing is charged from a membership that does not match the chain
    rc, _, err = cli("ledger", "reserve", "--dataset", "a", "--block", "2002", *HEAVY)
    assert rc != 0 and "does not match the digest" in err


def test_patients_over_a_lowered_limit_are_counted(cli, charged, tmp_path) -> None:
    a, _ = charged
    spec = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    spec["budget"]["epsilon_per_block"] = 5.0
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(yaml.safe_dump(spec))
    rc, _, err = cli("policy", "set", str(lowered), "--reason", "a stricter data owner")
    assert rc == 0, err
    over = [f for f in _audit(cli) if f["kind"] == "block_over_budget" and "domain" in f]
    assert len(over) == 1
    assert over[0]["domain"] == "dom" and over[0]["patients"] == a.blocks["2001"]
    assert f"{a.blocks['2001']} patient(s) of domain dom" in over[0]["detail"]
