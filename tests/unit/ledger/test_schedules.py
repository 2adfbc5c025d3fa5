"""``budget.composition: fixed``: tight PLD composition is enforced only for runs of a schedule
committed in advance (a chained ``schedule_committed`` entry); any other reservation is
refused with nothing charged. On a real SQLite file (and PostgreSQL where it answers)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.errors import BudgetExceeded, Refused, UsageError
from dpgov.ledger import Ledger
from dpgov.ledger.schedules import SCHEDULE_KIND, parse_schedule_file
from dpgov.ledger.schema import entries_t
from dpgov.ledger.verified import LedgerInconsistent
from dpgov.policy.schema import Budget
from tests.filter_reference import admitted
from tests.integration.ledger.test_tamper_chain import as_attacker

FIXED = Budget(epsilon_per_block=3.0, delta=1e-5, accountant="pld", composition="fixed")
ADAPTIVE = Budget(epsilon_per_block=3.0, delta=1e-5, accountant="pld")
RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=300)  # PLD ε ≈ 1.07


@pytest.fixture
def led(ledger_url: str):
    ledger = Ledger.open(ledger_url)
    ledger.add_block(dataset="d", block="b1", patients=60, members=[f"{i:020x}" for i in range(60)])
    ledger.add_block(
        dataset="d", block="b2", patients=60, members=[f"{i:020x}" for i in range(60, 120)]
    )
    yield ledger
    ledger.close()


def pld_feasible(limit: float = 3.0) -> int:
    return max(n for n in range(1, 60) if epsilon([RUN] * n, delta=1e-5) <= limit)


def test_a_fixed_mode_reservation_outside_every_committed_schedule_is_refused(led):
    before = len(led.entries())
    with pytest.raises(Refused, match=r"composition is fixed.*no committed schedule"):
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=FIXED)
    assert len(led.entries()) == before  # nothing written
    assert led.block_status("d", "b1", FIXED).charges == 0


def test_runs_of_a_committed_schedule_are_admitted_by_tight_pld(led):
    n = pld_feasible()
    filter_n = max(k for k in range(1, 60) if admitted([RUN] * k, epsilon=3.0, delta=1e-5))
    assert n > filter_n  # committing in advance buys runs: adaptivity's cost
    with pytest.raises(Refused, match="schedule refused"):  # the whole schedule must fit
        led.plan_schedule(dataset="d", blocks=["b1"], runs=[RUN] * (n + 1), budget=FIXED)
    assert not [e for e in led.entries() if e.kind == SCHEDULE_KIND]
    entry = led.plan_schedule(dataset="d", blocks=["b1"], runs=[RUN] * n, budget=FIXED)
    assert entry.kind == SCHEDULE_KIND and len(entry.payload["runs"]) == n
    for i in range(n):
        res = led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=FIXED)
        assert res.epsilon_after["b1"] == pytest.approx(epsilon([RUN] * (i + 1), delta=1e-5))
    status = led.block_status("d", "b1", FIXED)
    assert status.composition == "fixed"
    assert status.epsilon_spent == status.epsilon_spent_fixed <= 3.0
    assert status.epsilon_spent_adaptive > 3.0  # the adaptive filter would have stopped sooner
    before = len(led.entries())
    with pytest.raises(Refused):  # over the budget, and out of the schedule
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=FIXED)
    assert len(led.entries()) == before
    assert [s["used"] for s in led.schedules()] == [list(range(n))]


def test_a_used_up_schedule_admits_nothing_more(led):
    led.plan_schedule(dataset="d", blocks=["b1"], runs=[RUN] * 2, budget=FIXED)
    for _ in range(2):
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=FIXED)
    before = len(led.entries())
    with pytest.raises(Refused, match="no committed schedule"):  # within budget, not planned
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=FIXED)
    assert len(led.entries()) == before


def test_a_slot_matches_only_its_blocks_and_exact_mechanism_and_a_release_frees_it(led):
    led.plan_schedule(dataset="d", blocks=["b1", "b2"], runs=[RUN], budget=FIXED)
    with pytest.raises(Refused, match="no committed schedule"):
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=FIXED)
    with pytest.raises(Refused, match="no committed schedule"):
        led.reserve(dataset="d", blocks=["b1", "b2"], mechanism=RUN.with_steps(299), budget=FIXED)
    res = led.reserve(dataset="d", blocks=["b2", "b1"], mechanism=RUN, budget=FIXED)
    assert res.epsilon_after == pytest.approx(
        {"b2": epsilon([RUN], delta=1e-5), "b1": epsilon([RUN], delta=1e-5)}
    )
    led.release(res.id)  # no step ran: its slot is free again
    led.reserve(dataset="d", blocks=["b1", "b2"], mechanism=RUN, budget=FIXED)
    with pytest.raises(Refused, match="no committed schedule"):
        led.reserve(dataset="d", blocks=["b1", "b2"], mechanism=RUN, budget=FIXED)


def test_a_schedule_never_lets_a_run_pass_the_budget(led):
    n = pld_feasible()
    led.plan_schedule(dataset="d", blocks=["b1"], runs=[RUN] * n, budget=FIXED)
    led.plan_schedule(dataset="d", blocks=["b1"], runs=[RUN] * n, budget=FIXED)  # fits alone
    for _ in range(n):
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=FIXED)
    before = len(led.entries())
    with pytest.raises(BudgetExceeded):  # a slot of the second schedule is free: still refused
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=FIXED)
    assert len(led.entries()) == before


def test_adaptive_mode_ignores_schedules_and_applies_the_filter(led):
    led.plan_schedule(dataset="d", blocks=["b1"], runs=[RUN] * 5, budget=FIXED)
    granted = 0
    with pytest.raises(BudgetExceeded):
        for _ in range(5):
            led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=ADAPTIVE)
            granted += 1
    assert granted == max(k for k in range(1, 6) if admitted([RUN] * k, epsilon=3.0, delta=1e-5))


def test_the_mode_is_per_id_domain(led):
    led.add_block(
        dataset="e", block="x", patients=10, members=[f"{i:020x}" for i in range(500, 510)]
    )
    per_domain = Budget(
        epsilon_per_block=3.0,
        delta=1e-5,
        composition="adaptive",
        composition_by_domain={"e": "fixed"},
    )
    led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=per_domain)  # domain d: filter
    with pytest.raises(Refused, match="fixed for domain 'e'"):
        led.reserve(dataset="e", blocks=["x"], mechanism=RUN, budget=per_domain)
    assert led.block_status("d", "b1", per_domain).composition == "adaptive"
    assert led.block_status("e", "x", per_domain).composition == "fixed"


def test_an_edited_schedule_entry_is_never_a_schedule(led):
    led.plan_schedule(dataset="d", blocks=["b1"], runs=[RUN] * 3, budget=FIXED)
    forged = RUN.with_steps(301)  # never planned: only an edited entry would "plan" it
    with led.engine.begin() as conn:
        row = conn.execute(sa.select(entries_t).where(entries_t.c.kind == SCHEDULE_KIND)).one()
    p = json.loads(row.payload)
    p["runs"] = [forged.to_dict()] * 3
    as_attacker(
        led,
        "UPDATE dpgov_entries SET payload = :p WHERE seq = :seq",
        p=json.dumps(p),
        seq=row.seq,
    )
    with pytest.raises(LedgerInconsistent, match="does not match its hash"):
        led.reserve(dataset="d", blocks=["b1"], mechanism=forged, budget=FIXED)


def test_schedule_files_are_checked(tmp_path):
    good = tmp_path / "s.yaml"
    good.write_text(
        "dataset: d\nblocks: [b1]\npurpose: waves\nruns:\n"
        "  - {noise_multiplier: 1.0, sample_rate: 0.01, steps: 300, count: 2}\n"
    )
    sched = parse_schedule_file(good)
    assert sched.runs == [RUN, RUN] and sched.blocks == ["b1"] and len(sched.sha256) == 64
    for text, message in [
        ("dataset: d\nblocks: [b1]\nruns: []\n", "'runs' must be a non-empty list"),
        ("dataset: d\nblocks: []\nruns: [{noise_multiplier: 1}]\n", "'blocks' must be"),
        ("dataset: d\nblocks: [b1]\nruns: [{sigma: 1}]\n", "unknown key 'sigma'"),
        ("dataset: d\nblocks: [b1]\nwhen: now\nruns: [{steps: 1}]\n", "unknown key 'when'"),
        (
            "dataset: d\nblocks: [b1]\nruns: [{noise_multiplier: 0, sample_rate: 0.1, steps: 3}]\n",
            "run 1: noise_multiplier must be > 0",
        ),
        (
            "dataset: d\nblocks: [b1]\nruns: [{noise_multiplier: 1, sample_rate: 0.1, steps: 3, "
            "count: 0}]\n",
            "count must be an integer >= 1",
        ),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(UsageError, match=message):
            parse_schedule_file(bad)
