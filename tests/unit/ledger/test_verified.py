"""The state rebuilt from entry rows: what it accepts, and every way it refuses to be fooled.

Rows are built here exactly as the ledger stores them (canonical payload, chained hashes), so
these tests need no database.
"""

from __future__ import annotations

from typing import Any

import pytest

from dpgov.accounting import DpSgdMechanism
from dpgov.ledger.chain import GENESIS, canonical, entry_hash
from dpgov.ledger.verified import LedgerInconsistent, advance, replay_rows

RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.02, steps=100)
TIME = "2026-12-01T00:00:00.000000+00:00"


def chain(*entries: tuple[str, dict[str, Any]], start: int = 1, prev: str = GENESIS) -> list:
    rows = []
    for seq, (kind, payload) in enumerate(entries, start=start):
        digest = entry_hash(
            seq=seq, kind=kind, payload=payload, time=TIME, actor="a", prev_hash=prev
        )
        rows.append((seq, kind, canonical(payload), TIME, "a", prev, digest))
        prev = digest
    return rows


BLOCK = ("block_added", {"dataset": "d", "block": "b", "patients": 10, "data_version": None})
RETIRE = ("block_retired", {"dataset": "d", "block": "b", "reason": "withdrawn"})
RESERVE = (
    "reservation",
    {"reservation": "r1", "dataset": "d", "blocks": ["b"], "mechanism": RUN.to_dict()},
)


def commit(steps: int, **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("commit", {"reservation": "r1", "mechanism": RUN.with_steps(steps).to_dict(), **extra})


def test_a_well_formed_history_is_rebuilt():
    st = replay_rows(chain(BLOCK, RESERVE, ("note", {"x": 1}), commit(40)))
    assert st.seq == 4 and st.reservation("r1").status == "committed"
    assert st.multiset("d", "b") == ([(RUN.with_steps(40), 1)], 1, 0)
    assert st.block("d", "b").patients == 10


def test_rows_are_applied_incrementally_to_the_same_state():
    rows = chain(BLOCK, RESERVE, commit(100))
    whole = replay_rows(rows)
    part = advance(replay_rows(rows[:1]), rows[1:])
    assert (part.seq, part.head, part.reservations) == (whole.seq, whole.head, whole.reservations)


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda rows: [rows[0], rows[2]], "expected entry 2, found 3"),
        (lambda rows: [rows[0], (*rows[1][:5], "f" * 64, rows[1][6]), rows[2]], "does not follow"),
        (
            lambda rows: [rows[0], (*rows[1][:2], rows[1][2].replace("1.0", "50.0"), *rows[1][3:])],
            "does not match its hash",
        ),
    ],
    ids=["a deleted entry", "a broken link", "an edited state entry"],
)
def test_a_broken_chain_is_refused(mangle, match):
    rows = chain(BLOCK, RESERVE, commit(100))
    with pytest.raises(LedgerInconsistent, match=match):
        replay_rows(mangle(rows))


@pytest.mark.parametrize(
    ("history", "match"),
    [
        ((BLOCK, RESERVE, commit(100), commit(100)), "already committed"),
        ((BLOCK, RESERVE, commit(100), ("release", {"reservation": "r1"})), "already committed"),
        ((BLOCK, RESERVE, commit(101)), "not at most what r1 reserved"),
        ((BLOCK, ("abort", {"reservation": "r9"})), "never made"),
        ((RESERVE,), "never registered"),
        ((BLOCK, BLOCK), "registered again"),
        ((BLOCK, RETIRE, RETIRE), "already retired"),
    ],
    ids=[
        "commit twice",
        "release a commit",
        "commit more",
        "close unknown",
        "unregistered",
        "add twice",
        "retire twice",
    ],
)
def test_state_changes_the_ledger_never_writes_are_refused(history, match):
    with pytest.raises(LedgerInconsistent, match=match):
        replay_rows(chain(*history))


def test_an_edited_note_is_linked_but_not_re_hashed_here():
    """A gate decision or note is checked by verify_chain; nothing here depends on it."""
    rows = chain(BLOCK, ("note", {"x": 1}), RESERVE)
    edited = [rows[0], (*rows[1][:2], canonical({"x": 2}), *rows[1][3:]), rows[2]]
    assert replay_rows(edited).reservation("r1").status == "pending"


def test_a_declared_restore_may_skip_the_lost_seqs_and_nothing_else():
    first = chain(BLOCK, RESERVE)
    head = first[-1][6]
    restore = {"backup_seq": 2, "backup_hash": head, "lost_through": 5}
    rows = first + chain(("restored", restore), start=6, prev=head)
    assert replay_rows(rows).seq == 6
    wrong = first + chain(("restored", dict(restore, lost_through=4)), start=6, prev=head)
    with pytest.raises(LedgerInconsistent, match="expected entry 3, found 6"):
        replay_rows(wrong)


def test_seals_are_kept_per_block_and_accountant():
    seal = {"dataset": "d", "block": "b", "accountant": "pld:0.0002", "multiset": "m", "state": "s"}
    st = replay_rows(chain(BLOCK, (RESERVE[0], dict(RESERVE[1], composition=[seal]))))
    found = st.seal("d", "b", "pld:0.0002")
    assert found is not None and (found.multiset, found.state) == ("m", "s")
    assert st.seal("d", "b", "rdp:") is None
    stray = dict(seal, block="nope")
    with pytest.raises(LedgerInconsistent, match="never registered"):
        replay_rows(chain(BLOCK, (RESERVE[0], dict(RESERVE[1], composition=[stray]))))
