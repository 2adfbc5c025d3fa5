"""Rebuilding the ledger's state from its entries, and ε from scratch."""

from __future__ import annotations

import random

import pytest
from audit_factories import M1, M2, Rows

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import (
    Epsilons,
    RawEntry,
    close_enough,
    merge_key,
    merge_steps,
    replay,
)


def test_replay_rebuilds_blocks_and_charges():
    rows = Rows()
    rows.block("b1")
    rows.block("b2")
    rows.reserve("r1", ["b1", "b2"])
    rows.commit("r1", M1.with_steps(30))
    rows.reserve("r2", ["b1"], M2)
    rows.close("abort", "r2")
    rows.reserve("r3", ["b2"], M2)
    rows.close("release", "r3")
    rows.reserve("r4", ["b2"], M2)
    r = replay(rows.rows)
    assert not r.problems
    assert {k: c.status for k, c in r.charges.items()} == {
        "r1": "committed",
        "r2": "aborted",
        "r3": "released",
        "r4": "pending",
    }
    assert r.block_mechanisms("d", "b1") == [M1.with_steps(30), M2]  # aborted stays charged
    assert r.block_mechanisms("d", "b2") == [M1.with_steps(30), M2]  # released does not
    # as of entry 3 (r1 reserved, not yet committed) the plan is charged
    assert r.block_mechanisms("d", "b1", at_seq=3) == [M1]
    assert r.change_seqs("d", "b2") == [3, 4, 7, 8, 9]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda r: r.commit("nope"), "closes reservation nope, which was never made"),
        (
            lambda r: (r.reserve("x", ["b1"]), r.commit("x"), r.commit("x")),
            "closes reservation x again",
        ),
        (lambda r: (r.reserve("x", ["b1"]), r.commit("x", M2)), "other than the one reserved"),
        (lambda r: (r.reserve("x", ["b1"]), r.commit("x", M1.with_steps(99))), "more than the 40"),
        (lambda r: r.reserve("x", ["b9"]), "charges block d/b9, which was not registered"),
        (lambda r: r.block("b1"), "registered again"),
    ],
)
def test_protocol_violations_are_findings(build, fragment):
    rows = Rows()
    rows.block("b1")
    build(rows)
    problems = replay(rows.rows).problems
    assert [p.kind for p in problems] == ["replay_inconsistent"]
    assert fragment in problems[0].detail


def test_a_corrupted_payload_is_a_finding_and_the_rest_is_rebuilt():
    rows = Rows()
    rows.block("b1")
    rows.add("reservation", None, text='{"reservation": ')
    rows.reserve("r2", ["b1"])
    rows.add("commit", {"reservation": "r2"})  # lacks its mechanism
    r = replay(rows.rows)
    assert [(p.kind, p.where["seq"]) for p in r.problems] == [
        ("row_corrupted", 2),
        ("row_corrupted", 4),
    ]
    assert "'mechanism'" in r.problems[1].detail
    assert r.charges["r2"].status == "pending"


def test_raw_entry_keeps_unreadable_rows():
    row = RawEntry.from_row(("7", "note", "[1, 2]", "t", "a", "p", "h", None))
    assert row.seq == 7 and row.payload is None  # JSON, but not an object


def test_merging_steps_composes_exactly_like_the_ledger():
    rng = random.Random(3)
    mechs = [
        DpSgdMechanism(
            noise_multiplier=rng.choice([1.0, 1.5]),
            sample_rate=rng.choice([0.01, 0.02]),
            steps=rng.choice([10, 50, 100]),
        )
        for _ in range(12)
    ]
    merged = merge_steps(mechs)
    assert len(merged) <= 4 and sum(m.steps for m in merged) == sum(m.steps for m in mechs)
    eps = Epsilons()
    for accountant in ("pld", "rdp"):
        ours = eps.of(mechs, delta=1e-5, accountant=accountant)
        ref = epsilon(mechs, delta=1e-5, accountant=accountant)
        assert close_enough(ours, ref, rel=1e-6), (accountant, ours, ref)
    computed = eps.computed
    eps.of(list(reversed(mechs)), delta=1e-5, accountant="pld")  # the same multiset
    assert eps.computed == computed
    assert eps.of([], delta=1e-5, accountant="pld") == 0.0


def test_close_enough():
    assert close_enough(2.0, 2.0001) and not close_enough(2.0, 2.001)
    assert close_enough(0.0, 5e-7) and not close_enough(float("inf"), 1e9)


def test_finding_kinds_are_checked_and_empty_fields_dropped():
    with pytest.raises(ValueError, match="unknown finding kind"):
        Finding("chain_brokn", "typo")
    f = finding("chain_broken", "x", seq=3, block=None, time="2026-01-01T00:00:00+00:00")
    assert f.to_dict() == {
        "kind": "chain_broken",
        "detail": "x",
        "seq": 3,
        "time": "2026-01-01T00:00:00+00:00",
    }


def test_prefetch_composes_in_worker_processes_and_agrees():
    keys = [merge_key([M1.with_steps(n)]) for n in (5, 10, 15, 20, 25)]
    parallel = Epsilons(workers=2)
    parallel.prefetch([(k, 1e-5, "pld") for k in keys])
    assert parallel.computed == len(keys)  # composed by the workers, cached here
    serial = Epsilons(workers=1)
    for k in keys:
        assert parallel.known(k, delta=1e-5, accountant="pld") == serial.of_key(
            k, delta=1e-5, accountant="pld"
        )


def test_start_composes_in_the_background_and_collects_on_first_use():
    keys = [merge_key([M2.with_steps(n)]) for n in (3, 6, 9, 12)]
    eps = Epsilons(workers=2)
    eps.start([(k, 1e-5, "rdp") for k in keys])
    assert eps.known(keys[0], delta=1e-5, accountant="rdp") is not None  # waited for
    assert eps.computed == len(keys)
