"""Reading never waits for the write lock; a writer that waits says what it waits for.

Another process holds the ledger's global write lock (``BEGIN IMMEDIATE`` on SQLite, the
advisory lock on PostgreSQL) for a few seconds; meanwhile budgets, verification and listings
answer at once, and a write waits, then proceeds, having said on stderr that it waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dpgov.accounting import DpSgdMechanism
from dpgov.ledger import Ledger
from dpgov.ledger.database import write_transaction
from dpgov.policy.schema import Budget
from tests.cli import run_dpgov

BUDGET = Budget(epsilon_per_block=8.0, delta=1e-5)
RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.02, steps=50)
HOLD_S = 3.0


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger.open(ledger_url)
    led.add_block(dataset="d", block="b1", patients=500)
    led.commit(led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET).id)
    yield led
    led.close()


@contextmanager
def lock_held_elsewhere(url: str, seconds: float = HOLD_S) -> Iterator[None]:
    """Another connection holds the write lock for ``seconds`` (from a thread)."""
    holder = Ledger.open(url)
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with write_transaction(holder.engine):
            taken.set()
            done.wait(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(30)
    try:
        yield
    finally:
        thread.join()
        holder.close()


def test_reading_commands_do_not_wait_for_a_writer(
    ledger, ledger_url, dpgov_home, monkeypatch, capsys
):
    monkeypatch.setenv("DPGOV_LEDGER_URL", ledger_url)
    with lock_held_elsewhere(ledger_url):
        t = time.monotonic()
        reader = Ledger.open(ledger_url)  # opening an existing ledger takes no lock either
        assert reader.block_status("d", "b1", BUDGET).charges == 1
        assert reader.verify().ok
        assert [b.block for b in reader.blocks("d")] == ["b1"]
        reader.close()
        code, _out, err = run_dpgov(monkeypatch, capsys, "budget", "--json")
        assert code == 0, err
        code, _, err2 = run_dpgov(monkeypatch, capsys, "ledger", "show", "--json")
        assert code == 0, err2
        took = time.monotonic() - t
    assert took < HOLD_S - 0.5, f"readers waited {took:.1f} s behind the writer"
    assert "dpgov: waiting" not in err + err2


def test_a_waiting_writer_says_what_it_waits_for(ledger, ledger_url, capsys):
    capsys.readouterr()
    with lock_held_elsewhere(ledger_url):
        t = time.monotonic()
        ledger.add_block(dataset="d", block="b2", patients=10)
        waited = time.monotonic() - t
    err = capsys.readouterr().err
    assert waited > 1.0
    assert "waiting for the ledger's write lock" in err
    assert err.count("dpgov: waiting") == 1  # said once, after about a second
    assert [b.block for b in ledger.blocks("d")] == ["b1", "b2"]


def test_a_writer_that_gets_the_lock_at_once_says_nothing(ledger, capsys):
    capsys.readouterr()
    ledger.add_block(dataset="d", block="b3", patients=10)
    assert "dpgov: waiting" not in capsys.readouterr().err
