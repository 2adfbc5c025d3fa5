"""Processes racing on per-patient accounting (issue 15), on SQLite and PostgreSQL: reservations
on *overlapping* blocks (every reservation reaches the patients both blocks hold, so together
they never overspend those patients' budget), and registrations of one block with members."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
from tests.filter_reference import filter_eps

RUN = DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.01, steps=200)
PROCESSES = 6
ATTEMPTS_EACH = 2
FEASIBLE = 4


def ids(first: int, last: int) -> list[str]:
    return [f"{i:020x}" for i in range(first, last)]


def limit() -> float:
    """Halfway between the enforced ε (the RDP filter's, the default rule) of FEASIBLE and
    FEASIBLE + 1 runs."""
    return (filter_eps([RUN] * FEASIBLE, 1e-5) + filter_eps([RUN] * (FEASIBLE + 1), 1e-5)) / 2


def _racer(url: str, eps_limit: float, index: int, barrier, results) -> None:  # child process
    from dpgov.errors import BudgetExceeded

    ledger = Ledger.open(url)
    budget = Budget(epsilon_per_block=eps_limit, delta=1e-5)
    barrier.wait()
    for attempt in range(ATTEMPTS_EACH):
        # half the racers charge block "a", half "b" (another dataset, the same domain)
        dataset, block = ("d", "a") if (index + attempt) % 2 else ("d2", "b")
        try:
            ledger.reserve(dataset=dataset, blocks=[block], mechanism=RUN, budget=budget)
            results.put("granted")
        except BudgetExceeded:
            results.put("refused")
        except Exception as err:  # anything else is a failure of the test
            results.put(f"error: {type(err).__name__}: {err}")


@pytest.mark.slow
def test_racing_reservations_over_overlapping_blocks_never_overspend_a_patient(ledger_url):
    eps_limit = limit()
    ledger = Ledger.open(ledger_url)
    ledger.add_block(dataset="d", block="a", patients=60, members=ids(0, 60))
    ledger.add_block(dataset="d2", block="b", patients=60, members=ids(40, 100), domain="d")

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_racer, args=(ledger_url, eps_limit, i, barrier, results))
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(PROCESSES * ATTEMPTS_EACH)]
    for p in procs:
        p.join(timeout=60)

    assert [o for o in outcomes if o.startswith("error")] == []
    assert outcomes.count("granted") == FEASIBLE
    budget = Budget(epsilon_per_block=eps_limit, delta=1e-5)
    a, b = ledger.block_status("d", "a", budget), ledger.block_status("d2", "b", budget)
    assert a.charges + b.charges == FEASIBLE
    # patients 40..59 are in both blocks: every granted run reached them
    assert a.epsilon_spent == pytest.approx(filter_eps([RUN] * FEASIBLE, 1e-5), rel=1e-9)
    assert a.epsilon_spent_fixed == pytest.approx(epsilon([RUN] * FEASIBLE, delta=1e-5), rel=1e-6)
    assert max(a.epsilon_spent, b.epsilon_spent) <= eps_limit
    assert ledger.verify().ok
    ledger.close()


def _registrar(url: str, barrier, results) -> None:  # runs in a child process
    ledger = Ledger.open(url)
    barrier.wait()
    try:
        entry = ledger.add_block(dataset="d", block="same", patients=500, members=ids(0, 500))
        results.put("written" if entry is not None else "idempotent")
    except Exception as err:  # anything else is a failure of the test
        results.put(f"error: {type(err).__name__}: {err}")


@pytest.mark.slow
def test_racing_registrations_of_one_block_write_it_once(ledger_url):
    Ledger.open(ledger_url).close()  # the schema exists before the race
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_registrar, args=(ledger_url, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=300) for _ in range(4))
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["idempotent"] * 3 + ["written"]
    ledger = Ledger.open(ledger_url)
    assert len(ledger.entries("block_added")) == 1
    assert ledger.verify_membership() == []
    ledger.close()
