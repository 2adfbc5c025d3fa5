"""Every way of tampering with the entries is detected, on SQLite and on PostgreSQL.

The append-only triggers are dropped first: these tests play an administrator who can
bypass the application and edit the table directly.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from dpgov.accounting import DpSgdMechanism
from dpgov.ledger import Ledger
from dpgov.ledger.chain import canonical, entry_hash
from dpgov.policy.schema import Budget

BUDGET = Budget(epsilon_per_block=8.0, delta=1e-5)
RUN = DpSgdMechanism(noise_multiplier=1.2, sample_rate=0.02, steps=50)


@pytest.fixture
def ledger(ledger_url: str) -> Ledger:
    led = Ledger.open(ledger_url)
    led.add_block(dataset="d", block="b1", patients=500)
    for _ in range(2):
        res = led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET)
        led.commit(res.id)
    led.append(kind="note", payload={"text": "last"})
    assert led.verify().ok and len(led.entries()) == 6
    yield led
    led.close()


def bypass_triggers(led: Ledger) -> None:
    with led.engine.begin() as conn:
        if led.dialect == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER dpgov_entries_no_update")
            conn.exec_driver_sql("DROP TRIGGER dpgov_entries_no_delete")
        else:
            conn.exec_driver_sql(
                "ALTER TABLE dpgov_entries DISABLE TRIGGER dpgov_entries_append_only"
            )


def sql(led: Ledger, statement: str, **params) -> None:
    with led.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_the_database_refuses_updates_and_deletes_of_entries(ledger):
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        sql(ledger, "UPDATE dpgov_entries SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        sql(ledger, "DELETE FROM dpgov_entries WHERE seq = 2")
    assert ledger.verify().ok


def test_an_edited_payload_is_detected_at_that_entry(ledger):
    bypass_triggers(ledger)
    entry = ledger.entries()[2]
    forged = dict(entry.payload, epsilon_run=0.0001)
    sql(
        ledger,
        "UPDATE dpgov_entries SET payload = :p WHERE seq = :s",
        p=canonical(forged),
        s=entry.seq,
    )
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == entry.seq
    assert "does not match its hash" in result.reason


def test_an_edited_actor_is_detected(ledger):
    bypass_triggers(ledger)
    sql(ledger, "UPDATE dpgov_entries SET actor = 'mallory' WHERE seq = 4")
    assert ledger.verify().first_bad_seq == 4


def test_a_deleted_entry_is_detected(ledger):
    bypass_triggers(ledger)
    sql(ledger, "DELETE FROM dpgov_entries WHERE seq = 3")
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == 3
    assert "missing" in result.reason


def test_an_inserted_entry_is_detected(ledger):
    bypass_triggers(ledger)
    # make room at seq 3 by shifting later entries, then insert a well-formed entry there
    sql(ledger, "UPDATE dpgov_entries SET seq = seq + 100 WHERE seq >= 3")
    sql(ledger, "UPDATE dpgov_entries SET seq = seq - 99 WHERE seq >= 103")
    prev = ledger.entries()[1]
    payload = {"text": "forged"}
    digest = entry_hash(
        seq=3, kind="note", payload=payload, time=prev.time, actor="mallory", prev_hash=prev.hash
    )
    sql(
        ledger,
        "INSERT INTO dpgov_entries (seq, kind, payload, time, actor, prev_hash, hash) "
        "VALUES (3, 'note', :p, :t, 'mallory', :prev, :h)",
        p=canonical(payload),
        t=prev.time,
        prev=prev.hash,
        h=digest,
    )
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == 4


def test_reordered_entries_are_detected(ledger):
    bypass_triggers(ledger)
    sql(ledger, "UPDATE dpgov_entries SET seq = 100 WHERE seq = 3")
    sql(ledger, "UPDATE dpgov_entries SET seq = 3 WHERE seq = 4")
    sql(ledger, "UPDATE dpgov_entries SET seq = 4 WHERE seq = 100")
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == 3


def rewrite_chain(led: Ledger, edit_seq: int) -> None:
    """Edit one entry and recompute every hash after it: a consistent forged chain."""
    entries = led.entries()
    prev = entries[edit_seq - 2].hash
    for e in entries[edit_seq - 1 :]:
        payload = dict(e.payload, forged=True) if e.seq == edit_seq else e.payload
        digest = entry_hash(
            seq=e.seq, kind=e.kind, payload=payload, time=e.time, actor=e.actor, prev_hash=prev
        )
        sql(
            led,
            "UPDATE dpgov_entries SET payload = :p, prev_hash = :prev, hash = :h, "
            "signature = NULL WHERE seq = :s",
            p=json.dumps(payload),
            prev=prev,
            h=digest,
            s=e.seq,
        )
        prev = digest


def test_a_rewritten_chain_is_detected_by_the_hmac_signatures(ledger_url, monkeypatch):
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", "secret-held-by-the-dpo")
    led = Ledger.open(ledger_url)
    led.add_block(dataset="d", block="b1", patients=500)
    for _ in range(3):
        led.append(kind="note", payload={"n": 1})
    assert led.verify().ok
    bypass_triggers(led)
    rewrite_chain(led, edit_seq=2)
    result = led.verify()
    assert not result.ok and result.first_bad_seq == 2
    assert "signature" in result.reason


def test_without_a_key_a_rewritten_chain_verifies_which_is_why_audit_anchors_it(ledger):
    bypass_triggers(ledger)
    rewrite_chain(ledger, edit_seq=2)
    assert ledger.verify().ok  # documented limit: an outside anchor or the HMAC key is needed
