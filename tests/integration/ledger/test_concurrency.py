"""Processes racing reservations on one block: exactly the feasible number succeed."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from dpgov.accounting import DpSgdMechanism
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
from tests.filter_reference import filter_eps

RUN = DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.01, steps=200)
PROCESSES = 8
ATTEMPTS_EACH = 2


def limit_for(feasible: int) -> float:
    """A limit halfway between the enforced ε (the RDP filter's, the default rule) of
    ``feasible`` and ``feasible + 1`` runs."""
    return (filter_eps([RUN] * feasible, 1e-5) + filter_eps([RUN] * (feasible + 1), 1e-5)) / 2


def _racer(url: str, limit: float, barrier, results) -> None:  # runs in a child process
    from dpgov.errors import BudgetExceeded

    ledger = Ledger.open(url)
    budget = Budget(epsilon_per_block=limit, delta=1e-5)
    barrier.wait()
    for _ in range(ATTEMPTS_EACH):
        try:
            ledger.reserve(dataset="d", blocks=["b"], mechanism=RUN, budget=budget)
            results.put("granted")
        except BudgetExceeded:
            results.put("refused")
        except Exception as err:  # anything else is a failure of the test
            results.put(f"error: {type(err).__name__}: {err}")


@pytest.mark.slow
def test_racing_processes_never_overspend(ledger_url):
    feasible = 5
    limit = limit_for(feasible)
    ledger = Ledger.open(ledger_url)
    ledger.add_block(dataset="d", block="b", patients=1000)

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_racer, args=(ledger_url, limit, barrier, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(PROCESSES * ATTEMPTS_EACH)]
    for p in procs:
        p.join(timeout=60)

    assert [o for o in outcomes if o.startswith("error")] == []
    assert outcomes.count("granted") == feasible
    status = ledger.block_status("d", "b", Budget(epsilon_per_block=limit, delta=1e-5))
    assert status.charges == feasible
    assert status.epsilon_spent <= limit
    assert ledger.verify().ok
    assert len(ledger.entries("reservation")) == feasible
