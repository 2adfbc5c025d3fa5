"""Rewriting the ledger's derived tables, as a database user without the key would.

The projections (``dpgov_blocks``, ``dpgov_reservations``, ``dpgov_charges``) and the
composition cache carry no triggers: anyone who may write the database can change them. Each
attack below lowers what the tables say a block has spent; the ledger must go on deciding from
its entries: ``verify`` fails naming the row, ``reserve`` refuses, ``budget`` shows the true
spend, and ``commit`` never writes a tampered σ into the chain. Every test runs on SQLite and
on PostgreSQL (``ledger_url``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from dpgov.accounting import DpSgdMechanism, epsilon, get_accountant
from dpgov.errors import BudgetExceeded, Refused
from dpgov.ledger import Ledger
from dpgov.ledger.chain import canonical
from dpgov.ledger.integrity import combine
from dpgov.ledger.verified import LedgerInconsistent
from dpgov.policy.schema import Budget
from dpgov.testing.policies import put_in_force
from tests.cli import run_dpgov
from tests.filter_reference import filter_eps

REPO = Path(__file__).resolve().parents[3]
DELTA = 1e-5
RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.02, steps=100)
# the enforced figures (the RDP filter's: the default rule), and the limit halfway between two
# runs (they fit) and three (they do not)
TWO_RUNS = filter_eps([RUN, RUN], DELTA)
ONE_RUN = filter_eps([RUN], DELTA)
LIMIT = round((TWO_RUNS + filter_eps([RUN] * 3, DELTA)) / 2, 3)
BUDGET = Budget(epsilon_per_block=LIMIT, delta=DELTA)
TWO_RUNS_PLD = epsilon([RUN, RUN], delta=DELTA)  # what the composition cache holds


class World:
    """Block b1 charged twice (committed), block b2 with one pending reservation, b3 retired."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ledger = Ledger.open(url)
        led = self.ledger
        for i, b in enumerate(("b1", "b2", "b3")):  # distinct patients (with their members)
            who = [f"{n:020x}" for n in range(500 * i, 500 * (i + 1))]
            led.add_block(dataset="d", block=b, patients=500, members=who)
        self.r1 = led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET).id
        led.commit(self.r1)
        self.r2 = led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET).id
        led.commit(self.r2)
        self.r3 = led.reserve(dataset="d", blocks=["b2"], mechanism=RUN, budget=BUDGET).id
        led.retire_block(dataset="d", block="b3", reason="data withdrawn")
        self.engine = sa.create_engine(url)  # the attacker's own connection

    def sql(self, statement: str, **params: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(statement), params)

    def entries(self) -> int:
        return len(self.ledger.entries())

    def spent(self, block: str) -> float:
        return self.ledger.block_status("d", block, BUDGET).epsilon_spent

    def close(self) -> None:
        self.engine.dispose()
        self.ledger.close()


@pytest.fixture
def world(ledger_url: str):
    w = World(ledger_url)
    assert all(r.ok for r in w.ledger.verify_all())
    yield w
    w.close()


@pytest.fixture
def cli(world: World, dpgov_home: Path, tmp_path: Path, monkeypatch, capsys):
    """``dpgov ARGS`` on the world's ledger under a policy with the test's limit."""
    monkeypatch.setenv("DPGOV_LEDGER_URL", world.url)
    text = (REPO / "policies" / "default.yaml").read_text()
    policy = tmp_path / "policy.yaml"
    policy.write_text(text.replace("epsilon_per_block: 8.0", f"epsilon_per_block: {LIMIT}"))
    put_in_force(policy, ledger=world.ledger)  # lowers the limit: in force at once

    def call(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args)

    return call


def disagreement(world: World) -> dict:
    chain, tables = world.ledger.verify_all()
    assert chain.ok  # the chain itself is intact: only a table was rewritten
    assert not tables.ok and not combine(chain, tables).ok
    return tables.disagreements[0].to_dict()


def assert_reserve_refused(world: World, block: str = "b1") -> None:
    before = world.entries()
    with pytest.raises(Refused):
        world.ledger.reserve(dataset="d", blocks=[block], mechanism=RUN, budget=BUDGET)
    assert world.entries() == before


def budget_json(cli, block: str) -> tuple[dict, str]:
    code, out, err = cli("budget", "--dataset", "d", "--json")
    assert code == 0, err
    data = json.loads(out)
    rows = {b["block"]: b for b in data["datasets"][0]["blocks"]}
    return {**rows[block], "tables_agree": data["tables_agree"]}, err


def test_an_untampered_ledger_verifies_clean_and_its_checks_are_not_vacuous(world, cli):
    chain, tables = world.ledger.verify_all()
    assert chain.ok and tables.ok and tables.disagreements == []
    assert tables.checked == {
        "dpgov_blocks": 3,
        "dpgov_reservations": 3,
        "dpgov_charges": 3,
        "dpgov_composition_cache": 2,
    }
    assert tables.unsealed == 0  # every cached state is vouched for by an entry
    assert world.spent("b1") == pytest.approx(TWO_RUNS)
    code, out, err = cli("ledger", "verify", "--no-tracking", "--json")
    assert code == 0, err
    assert json.loads(out)["tables"]["ok"] is True
    row, err = budget_json(cli, "b1")
    assert row["epsilon_spent"] == pytest.approx(TWO_RUNS) and row["tables_agree"] is True
    assert "disagree" not in err
    # the overspend is refused for what it is, and what fits is granted
    with pytest.raises(BudgetExceeded):
        world.ledger.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET)
    world.ledger.reserve(dataset="d", blocks=["b2"], mechanism=RUN, budget=BUDGET)


def test_a_deleted_charge_row(world, cli):
    world.sql("DELETE FROM dpgov_charges WHERE reservation_id = :r", r=world.r1)
    assert disagreement(world) == {
        "table": "dpgov_charges",
        "key": f"{world.r1} d/b1",
        "column": "(row)",
        "stored": "absent",
        "derived": "present",
    }
    assert world.spent("b1") == pytest.approx(TWO_RUNS)
    assert world.ledger.block_status("d", "b1", BUDGET).charges == 2
    assert_reserve_refused(world)
    row, err = budget_json(cli, "b1")
    assert row["epsilon_spent"] == pytest.approx(TWO_RUNS) and row["charges"] == 2
    assert row["tables_agree"] is False and "dpgov_charges" in err
    code, _, err = cli("ledger", "verify", "--no-tracking")
    assert code == 1 and f"dpgov_charges row {world.r1} d/b1" in err


def test_a_committed_reservation_marked_released(world, cli):
    world.sql("UPDATE dpgov_reservations SET status = 'released' WHERE id = :r", r=world.r1)
    found = disagreement(world)
    assert found == {
        "table": "dpgov_reservations",
        "key": world.r1,
        "column": "status",
        "stored": "'released'",
        "derived": "'committed'",
    }
    assert world.ledger.reservation(world.r1).status == "committed"
    assert world.spent("b1") == pytest.approx(TWO_RUNS)
    assert_reserve_refused(world)
    row, _ = budget_json(cli, "b1")
    assert row["epsilon_spent"] == pytest.approx(TWO_RUNS)
    code, out, _ = cli("ledger", "verify", "--no-tracking", "--json")
    assert code == 1
    assert json.loads(out)["tables"]["disagreements"][0]["key"] == world.r1


def test_a_committed_reservation_marked_pending_cannot_be_released(world):
    world.sql("UPDATE dpgov_reservations SET status = 'pending' WHERE id = :r", r=world.r1)
    before = world.entries()
    with pytest.raises(Refused):
        world.ledger.release(world.r1, reason="give the budget back")
    assert world.entries() == before
    assert world.spent("b1") == pytest.approx(TWO_RUNS)


def test_sigma_rewritten_to_50_is_never_charged_nor_committed(world, cli):
    forged = canonical(dict(RUN.to_dict(), noise_multiplier=50.0))
    for rid in (world.r1, world.r3):
        world.sql("UPDATE dpgov_reservations SET mechanism = :m WHERE id = :r", m=forged, r=rid)
    found = disagreement(world)
    assert (found["table"], found["key"], found["column"]) == (
        "dpgov_reservations",
        world.r1,
        "mechanism",
    )
    assert '"noise_multiplier":50.0' in found["stored"]
    assert '"noise_multiplier":1.0' in found["derived"]
    assert world.ledger.reservation(world.r3).mechanism == RUN
    assert world.spent("b1") == pytest.approx(TWO_RUNS)
    assert world.spent("b2") == pytest.approx(ONE_RUN)
    assert_reserve_refused(world)
    # commit reads the reservation from the entries; while the tables disagree it writes nothing
    before = world.entries()
    with pytest.raises(Refused, match="disagree"):
        world.ledger.commit(world.r3, steps=40)
    assert world.entries() == before and world.ledger.reservation(world.r3).status == "pending"
    row, _ = budget_json(cli, "b2")
    assert row["epsilon_spent"] == pytest.approx(ONE_RUN)
    # repair rebuilds the rows from the entries, on the record; the commit then charges σ = 1
    code, out, err = cli("ledger", "repair", "--json")
    assert code == 0, err
    assert json.loads(out)["disagreements"] == 2
    assert world.ledger.entries()[-1].kind == "ledger_repaired"
    assert all(r.ok for r in world.ledger.verify_all())
    entry = world.ledger.commit(world.r3, steps=40)
    assert entry.payload["mechanism"] == RUN.with_steps(40).to_dict()
    committed = world.ledger.entries(kind="commit")
    assert all(e.payload["mechanism"]["noise_multiplier"] == 1.0 for e in committed)
    assert world.spent("b2") == pytest.approx(filter_eps([RUN.with_steps(40)], DELTA))
    assert all(r.ok for r in world.ledger.verify_all())


def test_a_cached_state_replaced_under_its_digest(world, cli):
    acc = get_accountant("pld")
    cheaper = acc.dumps(acc.add(acc.empty(), RUN))  # the state of one run, not two
    world.sql(
        "UPDATE dpgov_composition_cache SET state = :s WHERE dataset = 'd' AND block = 'b1'",
        s=cheaper,
    )
    found = disagreement(world)
    assert (found["table"], found["key"], found["column"]) == (
        "dpgov_composition_cache",
        "d/b1 pld:0.0002",
        "state",
    )
    assert world.spent("b1") == pytest.approx(TWO_RUNS)
    fixed = world.ledger.block_status("d", "b1", BUDGET).epsilon_spent_fixed
    assert fixed == pytest.approx(TWO_RUNS_PLD)  # recomposed, not read from the cache
    row, _ = budget_json(cli, "b1")
    assert row["epsilon_spent"] == pytest.approx(TWO_RUNS)
    before = world.entries()
    with pytest.raises(BudgetExceeded) as refused:  # the true spend, so the overspend is refused
        world.ledger.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET)
    assert refused.value.spent == pytest.approx(TWO_RUNS)
    assert world.entries() == before
    code, _, err = cli("ledger", "verify", "--no-tracking")
    assert code == 1 and "dpgov_composition_cache row d/b1 pld:0.0002: state" in err


def test_an_unretired_block(world, cli):
    world.sql("UPDATE dpgov_blocks SET retired = :f WHERE dataset = 'd' AND block = 'b3'", f=False)
    assert disagreement(world) == {
        "table": "dpgov_blocks",
        "key": "d/b3",
        "column": "retired",
        "stored": "False",
        "derived": "True",
    }
    assert {b.block: b.retired for b in world.ledger.blocks("d")}["b3"] is True
    with pytest.raises(Refused, match="retired"):
        world.ledger.reserve(dataset="d", blocks=["b3"], mechanism=RUN, budget=BUDGET)
    with pytest.raises(Refused, match="dpgov_blocks row d/b3"):  # nor retired again, quietly
        world.ledger.retire_block(dataset="d", block="b3", reason="again")
    row, err = budget_json(cli, "b3")
    assert row["retired"] is True and "dpgov_blocks row d/b3" in err
    # a write on another block relies on none of b3's rows: it proceeds, on the entries' state
    world.ledger.reserve(dataset="d", blocks=["b2"], mechanism=RUN, budget=BUDGET)
    assert not world.ledger.verify_all()[1].ok  # and the rewrite stays on show


def test_an_edited_entry_stops_enforcement(world):
    """Enforcement checks the hashes of the entries it reads (the triggers dropped first, as
    the table's owner could)."""
    with world.engine.begin() as conn:
        if world.ledger.dialect == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER dpgov_entries_no_update")
        else:
            conn.exec_driver_sql("ALTER TABLE dpgov_entries DISABLE TRIGGER USER")
    entry = next(e for e in world.ledger.entries(kind="reservation"))
    forged = dict(entry.payload, mechanism=dict(RUN.to_dict(), noise_multiplier=50.0))
    world.sql(
        "UPDATE dpgov_entries SET payload = :p WHERE seq = :s", p=canonical(forged), s=entry.seq
    )
    fresh = Ledger.open(world.url)  # a process that has not read the ledger before
    try:
        with pytest.raises(LedgerInconsistent, match=f"entry {entry.seq}"):
            fresh.block_status("d", "b1", BUDGET)
        before = len(fresh.entries())
        with pytest.raises(LedgerInconsistent):
            fresh.reserve(dataset="d", blocks=["b2"], mechanism=RUN, budget=BUDGET)
        assert len(fresh.entries()) == before
        assert not fresh.verify().ok
    finally:
        fresh.close()
