"""Per-patient budget reads from what the chain records (issue 15's benchmark targets): each
charge seals its classes' RDP vectors, so `dpgov budget` needs no accounting library, and under
the adaptive rule the accountant's (fixed) figure of a class is composed when its run closes,
not at the reservation. Real SQLite ledgers; references from dp_accounting itself."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from dp_accounting import dp_event, rdp

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.accounting.filters import FILTER_ORDERS
from dpgov.ledger import Ledger, classes
from dpgov.ledger.chain import canonical
from dpgov.ledger.verified import LedgerInconsistent
from dpgov.policy.schema import Budget

DELTA = 1e-5
ADAPTIVE = Budget(epsilon_per_block=8.0, delta=DELTA)  # the default rule: the RDP filter
A = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=300)
B = DpSgdMechanism(noise_multiplier=1.5, sample_rate=0.02, steps=200)
C = DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.01, steps=100)


def ids(first: int, last: int) -> list[str]:
    return [f"{i:020x}" for i in range(first, last)]


def pld_reference(*runs: DpSgdMechanism) -> float:
    return epsilon(list(runs), delta=DELTA) if runs else 0.0


def filter_reference(*runs: DpSgdMechanism) -> float:
    """The RDP filter's ε over FILTER_ORDERS: RDP from dp_accounting's RdpAccountant, the
    filter's formula (docs/composition.md) written out here."""
    if not runs:
        return 0.0
    acc = rdp.RdpAccountant(orders=list(FILTER_ORDERS))
    for m in runs:
        step = dp_event.PoissonSampledDpEvent(
            m.sample_rate, dp_event.GaussianDpEvent(m.noise_multiplier)
        )
        acc.compose(dp_event.SelfComposedDpEvent(step, m.steps))
    n = len(FILTER_ORDERS)
    return min(
        r + math.log(n / DELTA) / (a - 1) for a, r in zip(FILTER_ORDERS, acc._rdp, strict=True)
    )


def world(url: str) -> Ledger:
    """Blocks x = patients 0..99, y = 80..119 (20 patients in both), z = 200..209."""
    led = Ledger.open(url)
    led.add_block(dataset="d", block="x", patients=100, members=ids(0, 100))
    led.add_block(dataset="d", block="y", patients=40, members=ids(80, 120))
    led.add_block(dataset="d", block="z", patients=10, members=ids(200, 210))
    return led


def spent(led: Ledger) -> dict[str, tuple[float, float, float]]:
    return {
        s.block: (s.epsilon_spent, s.epsilon_spent_fixed, s.epsilon_spent_adaptive)
        for s in led.budget(ADAPTIVE, dataset="d")
    }


def expected(x: list[DpSgdMechanism], y: list[DpSgdMechanism]) -> dict[str, tuple[float, float]]:
    """Each block's worst class: x's own patients (x's charges), the shared ones (both)."""
    both = x + y
    worst_x = max(pld_reference(*x), pld_reference(*both))
    worst_y = max(pld_reference(*y), pld_reference(*both))
    return {
        "x": (worst_x, max(filter_reference(*x), filter_reference(*both))),
        "y": (worst_y, max(filter_reference(*y), filter_reference(*both))),
        "z": (0.0, 0.0),
    }


def check(led: Ledger, x: list[DpSgdMechanism], y: list[DpSgdMechanism]) -> None:
    got, want = spent(led), expected(x, y)
    for b, (fixed, adaptive) in want.items():
        assert got[b][1] == pytest.approx(fixed, rel=1e-6, abs=1e-12), b
        assert got[b][2] == pytest.approx(adaptive, rel=1e-9, abs=1e-12), b
        assert got[b][0] == got[b][2]  # the enforced figure is the filter's


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_each_charge_seals_its_classes_rdp_vectors_bit_for_bit(url):
    led = world(url)
    r1 = led.reserve(dataset="d", blocks=["x"], mechanism=A, budget=ADAPTIVE)
    led.commit(r1.id)
    r2 = led.reserve(dataset="d", blocks=["y"], mechanism=B, budget=ADAPTIVE)
    entry = next(e for e in led.entries("reservation") if e.payload["reservation"] == r2.id)
    sealed = entry.payload["class_rdp"]
    assert len(sealed) == 2  # the shared patients (A, B) and y's own (B)
    fresh = Ledger.open(url)
    with fresh._read() as conn:
        st = fresh._state(conn)
        vs = fresh._views(conn, st, [("d", "y")])
        for c in (c for v, _ in vs.values() for c in v.of_block(("d", "y"))):
            multiset = classes.class_multiset(st, c)
            recorded = st.members.rdp[(classes.digest(multiset), FILTER_ORDERS)]
            assert list(recorded) == fresh._rdp_of(multiset, FILTER_ORDERS)  # the same floats
    check(fresh, [A], [B])
    fresh.close()
    led.close()


def test_budget_reads_import_no_accounting_library_once_runs_closed(url, tmp_path):
    led = world(url)
    for blocks, m in ((["x"], A), (["y"], B), (["x", "z"], C)):
        led.commit(led.reserve(dataset="d", blocks=blocks, mechanism=m, budget=ADAPTIVE).id)
    led.close()
    code = (
        "import json, sys\n"
        "from dpgov.ledger import Ledger\n"
        "from dpgov.policy.schema import Budget\n"
        f"led = Ledger.open({url!r})\n"
        f"rows = led.budget(Budget(epsilon_per_block=8.0, delta={DELTA!r}), dataset='d')\n"
        "heavy = sorted(m for m in ('dp_accounting', 'scipy') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'rows': {s.block: [s.epsilon_spent_fixed,"
        " s.epsilon_spent_adaptive] for s in rows}}))\n"
    )
    env = {**os.environ, "DPGOV_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["heavy"] == []
    want = expected([A, C], [B])
    want["z"] = (pld_reference(C), filter_reference(C))
    for b, (fixed, adaptive) in want.items():
        assert found["rows"][b][0] == pytest.approx(fixed, rel=1e-6), b
        assert found["rows"][b][1] == pytest.approx(adaptive, rel=1e-9), b


def test_adaptive_reservation_composes_no_accountant_state_and_the_close_seals_it(url):
    led = world(url)
    r1 = led.reserve(dataset="d", blocks=["x"], mechanism=A, budget=ADAPTIVE)
    res_entry = led.entries("reservation")[-1]
    assert res_entry.payload["class_composition"] == []  # nothing composed for the filter
    check(led, [A], [])  # pending: the fixed figure is composed by the read, and right
    commit = led.commit(r1.id)
    seals = commit.payload["class_composition"]
    assert len(seals) == 2  # x's own patients and the shared ones: both charged A alone
    assert all(s["epsilon"] == pytest.approx(pld_reference(A), rel=1e-6) for s in seals)
    fresh = Ledger.open(url)
    calls: list[object] = []
    real = fresh._epsilon
    fresh._epsilon = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    check(fresh, [A], [])
    assert calls == []  # every figure came from the chain
    fresh.close()
    led.close()


def test_commit_of_fewer_steps_and_release_seal_what_stays_charged_abort_leaves_it(url):
    led = world(url)
    led.commit(led.reserve(dataset="d", blocks=["x"], mechanism=A, budget=ADAPTIVE).id)
    r = led.reserve(dataset="d", blocks=["y"], mechanism=B, budget=ADAPTIVE)
    led.commit(r.id, steps=50)  # early stop: only 50 of B's steps count
    short = B.with_steps(50)
    check(led, [A], [short])
    r = led.reserve(dataset="d", blocks=["x", "y"], mechanism=C, budget=ADAPTIVE)
    entry = led.release(r.id)  # no step ran: back to what was charged before
    assert entry.payload.get("class_composition") is None  # those figures are sealed already
    check(led, [A], [short])
    fresh = Ledger.open(url)
    calls: list[object] = []
    real = fresh._epsilon
    fresh._epsilon = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    check(fresh, [A], [short])
    assert calls == []
    r = led.reserve(dataset="d", blocks=["y"], mechanism=C, budget=ADAPTIVE)
    entry = led.abort(r.id, reason="killed")  # the plan stays charged; a crash's recovery
    assert "class_composition" not in entry.payload  # composes nothing: the read does
    check(fresh, [A], [short, C])
    assert len(calls) == 2  # the two classes y's patients are in
    fresh.close()
    led.close()


def test_an_edited_rdp_seal_is_refused_not_read(url):
    led = world(url)
    led.commit(led.reserve(dataset="d", blocks=["x"], mechanism=A, budget=ADAPTIVE).id)
    entry = led.entries("reservation")[-1]
    forged = json.loads(canonical(entry.payload))
    for item in forged["class_rdp"]:
        item["rdp"] = [0.0 for _ in item["rdp"]]  # a patient who spent nothing
    with led.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER dpgov_entries_no_update")
        conn.execute(
            sa.text("UPDATE dpgov_entries SET payload = :p WHERE seq = :s"),
            {"p": canonical(forged), "s": entry.seq},
        )
    led.close()
    fresh = Ledger.open(url)
    result = fresh.verify()
    assert not result.ok and result.first_bad_seq == entry.seq
    with pytest.raises(LedgerInconsistent):
        fresh.budget(ADAPTIVE, dataset="d")
    fresh.close()
