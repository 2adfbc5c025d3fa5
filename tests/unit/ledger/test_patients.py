"""Per-patient accounting (issue 15) at ledger level, on a real SQLite file (and a few cases on
PostgreSQL): every charge reaches the patients it touched, through any block or dataset of
their domain."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from dp_accounting import dp_event, rdp

from dpgov.accounting import DpSgdMechanism, epsilon, get_accountant
from dpgov.accounting.filters import FILTER_ORDERS
from dpgov.errors import BudgetExceeded, Refused, UsageError
from dpgov.ledger import Ledger
from dpgov.ledger.chain import canonical
from dpgov.ledger.classes import load_structure
from dpgov.ledger.membership import members_digest, pseudonym_sha256
from dpgov.ledger.schema import class_cache_t, class_structures_t, members_t
from dpgov.ledger.verified import LedgerInconsistent
from dpgov.policy.schema import Budget

BUDGET = Budget(epsilon_per_block=3.0, delta=1e-5, accountant="pld", composition="fixed")
RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=300)  # ε ≈ 1.07
BIG = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=2400)  # ε ≈ 2.84 alone


def ids(first: int, last: int) -> list[str]:
    """Pseudonyms of patients first..last-1 (20 hex digits)."""
    return [f"{i:020x}" for i in range(first, last)]


def eps(*runs: DpSgdMechanism) -> float:
    return epsilon(list(runs), delta=BUDGET.delta)


@pytest.fixture
def led(tmp_path) -> Iterator[Ledger]:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.add_block(dataset="flchain", block="1995", patients=100, members=ids(0, 100))
    ledger.add_block(dataset="flchain", block="1996", patients=100, members=ids(100, 200))
    yield ledger
    ledger.close()


def reserve(led: Ledger, **kw):
    """Commit a one-run schedule for the reservation (when it fits), then reserve it."""
    # over the budget the schedule is refused: the reservation itself must refuse then
    with contextlib.suppress(Refused):
        led.plan_schedule(
            dataset=kw["dataset"], blocks=kw["blocks"], runs=[kw["mechanism"]], budget=kw["budget"]
        )
    return led.reserve(**kw)


def status(led: Ledger, dataset: str, block: str, budget: Budget = BUDGET):
    return led.block_status(dataset, block, budget)


def test_regrouped_blocks_start_from_their_members_histories(led):
    assert eps(BIG) < BUDGET.epsilon_per_block < eps(RUN, BIG)
    reserve(led, dataset="flchain", blocks=["1995", "1996"], mechanism=RUN, budget=BUDGET)
    # prepared again with larger blocks: the same patients, new block names
    led.add_block(dataset="flchain", block="1995-1996a", patients=150, members=ids(0, 150))
    led.add_block(dataset="flchain", block="1996b", patients=50, members=ids(150, 200))
    for b in ("1995-1996a", "1996b"):
        assert status(led, "flchain", b).epsilon_spent == pytest.approx(eps(RUN), rel=1e-6)
    before = len(led.entries())
    with pytest.raises(BudgetExceeded, match="block '1995-1996a'") as info:
        reserve(
            led, dataset="flchain", blocks=["1995-1996a", "1996b"], mechanism=BIG, budget=BUDGET
        )
    assert info.value.after == pytest.approx(eps(RUN, BIG), rel=1e-6)  # the worst class's ε
    assert info.value.spent == pytest.approx(eps(RUN), rel=1e-6)
    assert len(led.entries()) == before
    # calibration binds on the members' histories: a σ that fits them is reserved
    sigma = led.calibrate(
        dataset="flchain",
        blocks=["1995-1996a", "1996b"],
        target_epsilon=BUDGET.epsilon_per_block,
        sample_rate=BIG.sample_rate,
        steps=BIG.steps,
        budget=BUDGET,
    )
    assert sigma > BIG.noise_multiplier
    fitted = DpSgdMechanism(noise_multiplier=sigma, sample_rate=BIG.sample_rate, steps=BIG.steps)
    res = reserve(
        led, dataset="flchain", blocks=["1995-1996a", "1996b"], mechanism=fitted, budget=BUDGET
    )
    assert eps(RUN, fitted) <= BUDGET.epsilon_per_block * (1 + 1e-9)
    assert max(res.epsilon_after.values()) == pytest.approx(eps(RUN, fitted), rel=1e-6)
    led.release(res.id)
    # patients never charged can afford it
    led.add_block(dataset="flchain", block="2003", patients=10, members=ids(500, 510))
    reserve(led, dataset="flchain", blocks=["2003"], mechanism=BIG, budget=BUDGET)


def test_the_same_patients_under_another_dataset_name_keep_their_history(led):
    reserve(led, dataset="flchain", blocks=["1995"], mechanism=RUN, budget=BUDGET)
    led.add_block(
        dataset="flchain_v2", block="all", patients=200, members=ids(0, 200), domain="flchain"
    )
    st = status(led, "flchain_v2", "all")
    assert st.domain == "flchain" and st.classes == 2
    assert st.epsilon_spent == pytest.approx(eps(RUN), rel=1e-6)
    with pytest.raises(BudgetExceeded):
        reserve(led, dataset="flchain_v2", blocks=["all"], mechanism=BIG, budget=BUDGET)
    # another domain is other patients, even with the same pseudonyms
    led.add_block(dataset="other", block="all", patients=200, members=ids(0, 200), domain="mrn@b")
    assert status(led, "other", "all").epsilon_spent == 0.0


def test_a_patient_in_two_blocks_of_one_run_is_charged_once_and_of_two_runs_twice(led):
    led.add_block(dataset="flchain", block="overlap", patients=20, members=ids(90, 110))
    reserve(led, dataset="flchain", blocks=["1995", "overlap"], mechanism=RUN, budget=BUDGET)
    # patients 90..99 are in both blocks of that run: charged once
    assert status(led, "flchain", "overlap").epsilon_spent == pytest.approx(eps(RUN), rel=1e-6)
    reserve(led, dataset="flchain", blocks=["1996"], mechanism=RUN, budget=BUDGET)
    # now patients 100..109 (overlap and 1996) have two runs; 1995's patients one
    assert status(led, "flchain", "overlap").epsilon_spent == pytest.approx(eps(RUN, RUN), rel=1e-6)
    assert status(led, "flchain", "1995").epsilon_spent == pytest.approx(eps(RUN), rel=1e-6)
    classes = {tuple(b for _, b in c.blocks): c for c in led.patient_classes(BUDGET)}
    assert classes[("1995", "overlap")].count == 10
    assert classes[("1996", "overlap")].count == 10
    assert len(classes[("1996", "overlap")].reservations) == 2
    assert classes[("1995",)].count == 90


def test_blocks_without_members_are_conservative_until_their_members_are_attached(led):
    led.add_block(dataset="flchain", block="legacy", patients=50, data_version="v1")
    reserve(led, dataset="flchain", blocks=["1995"], mechanism=RUN, budget=BUDGET)
    legacy = status(led, "flchain", "legacy")
    assert legacy.members is False
    assert legacy.epsilon_spent == pytest.approx(eps(RUN), rel=1e-6)  # 1995's charge reaches it
    reserve(led, dataset="flchain", blocks=["legacy"], mechanism=RUN, budget=BUDGET)
    # the legacy block's charge reaches every patient of the domain
    assert status(led, "flchain", "1996").epsilon_spent == pytest.approx(eps(RUN), rel=1e-6)
    assert status(led, "flchain", "1995").epsilon_spent == pytest.approx(eps(RUN, RUN), rel=1e-6)
    with pytest.raises(UsageError, match="data version 'v1', not 'v2'"):
        led.attach_members(
            dataset="flchain", block="legacy", members=ids(300, 350), data_version="v2"
        )
    with pytest.raises(UsageError, match="49 distinct members, not the 50"):
        led.attach_members(
            dataset="flchain", block="legacy", members=ids(300, 349), data_version="v1"
        )
    entry = led.attach_members(
        dataset="flchain", block="legacy", members=ids(300, 350), data_version="v1"
    )
    assert entry.payload["members_digest"] == members_digest(ids(300, 350))
    # precise now: 1996's patients were never in the legacy block
    assert status(led, "flchain", "1996").epsilon_spent == 0.0
    assert status(led, "flchain", "legacy").epsilon_spent == pytest.approx(eps(RUN), rel=1e-6)


def test_a_legacy_block_reaches_the_domain_its_dataset_declares_later(tmp_path):
    led = Ledger.open(f"sqlite:///{tmp_path / 'old.db'}")
    # a ledger from before issue 15: no members, the domain defaults to the dataset
    led.add_block(dataset="flchain", block="2001", patients=100, data_version="v1")
    reserve(led, dataset="flchain", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    # prepared again after the contract declared patient_id_domain: mrn@a
    with pytest.raises(UsageError, match="registered without members: attach them"):
        led.add_block(
            dataset="flchain", block="2001", patients=100, members=ids(0, 100), domain="mrn@a"
        )
    led.add_block(
        dataset="flchain", block="2001-2002", patients=150, members=ids(0, 150), domain="mrn@a"
    )
    new = status(led, "flchain", "2001-2002")
    assert new.domain == "mrn@a"
    assert new.epsilon_spent == pytest.approx(eps(RUN), rel=1e-6)  # never from zero
    with pytest.raises(BudgetExceeded):
        reserve(led, dataset="flchain", blocks=["2001-2002"], mechanism=BIG, budget=BUDGET)
    led.attach_members(
        dataset="flchain", block="2001", members=ids(0, 100), data_version="v1", domain="mrn@a"
    )
    assert status(led, "flchain", "2001").domain == "mrn@a"
    classes = {tuple(b for _, b in c.blocks): c.count for c in led.patient_classes(BUDGET)}
    assert classes == {("2001", "2001-2002"): 100, ("2001-2002",): 50}
    with pytest.raises(BudgetExceeded):  # patients 0..99 keep their charge
        reserve(led, dataset="flchain", blocks=["2001-2002"], mechanism=BIG, budget=BUDGET)
    led.close()


def test_membership_edited_outside_the_ledger_refuses_and_is_reported(led):
    reserve(led, dataset="flchain", blocks=["1995"], mechanism=RUN, budget=BUDGET)
    with led.engine.begin() as conn:  # swap one patient for another
        forged = bytes.fromhex("".join(sorted(ids(1, 100) + ids(999, 1000))))
        conn.execute(members_t.update().where(members_t.c.block == "1995").values(members=forged))
    before = len(led.entries())
    with pytest.raises(LedgerInconsistent, match=r"block '1995' of dataset 'flchain'.*edited"):
        reserve(led, dataset="flchain", blocks=["1995"], mechanism=RUN, budget=BUDGET)
    assert len(led.entries()) == before
    problems = led.verify_membership()
    assert [(p.dataset, p.block) for p in problems] == [("flchain", "1995")]
    assert "edited outside the ledger" in problems[0].line()


def test_registering_members_checks_them(led):
    with pytest.raises(UsageError, match="99 distinct members, not the 100"):
        led.add_block(dataset="flchain", block="x", patients=100, members=ids(0, 99))
    with pytest.raises(UsageError, match="'P-0001' is not a pseudonym"):
        led.add_block(dataset="flchain", block="x", patients=1, members=["P-0001"])
    assert led.add_block(dataset="flchain", block="1995", patients=100, members=ids(0, 100)) is None
    with pytest.raises(UsageError, match="registered with other members"):
        led.add_block(dataset="flchain", block="1995", patients=100, members=ids(1, 101))
    with pytest.raises(UsageError, match="registered in domain 'flchain' as 'train'"):
        led.add_block(
            dataset="flchain", block="1995", patients=100, members=ids(0, 100), split="test"
        )
    # a run registering its blocks again (counts only) is idempotent, whatever the domain
    led.add_block(dataset="x", block="y", patients=2, members=ids(0, 2), domain="mrn@a")
    assert led.add_block(dataset="x", block="y", patients=2) is None
    payload = led.entries("block_added")[0].payload
    assert payload["members_digest"] == members_digest(ids(0, 100))
    assert payload["domain"] == "flchain" and payload["split"] == "train"


def test_erasure_removes_the_pseudonym_from_membership_and_keeps_every_charge(led):
    led.add_block(dataset="flchain", block="again", patients=100, members=ids(0, 100))
    reserve(led, dataset="flchain", blocks=["1995"], mechanism=RUN, budget=BUDGET)
    spent = status(led, "flchain", "1995").epsilon_spent
    gone = ids(7, 8)[0]
    entry = led.erase_member(domain="flchain", pseudonym=gone, reason="art. 17 request")
    assert gone not in str(entry.payload)
    assert entry.payload["pseudonym_sha256"] == pseudonym_sha256(gone)
    assert sorted(b["block"] for b in entry.payload["blocks"]) == ["1995", "again"]
    assert status(led, "flchain", "1995").epsilon_spent == pytest.approx(spent)
    assert led.patient_history(gone) is None
    assert led.verify_membership() == []
    with pytest.raises(UsageError, match="in no block of domain 'flchain'"):
        led.erase_member(domain="flchain", pseudonym=gone, reason="again")


def test_the_pseudonym_key_fingerprint_is_recorded_once_and_a_different_one_refused(led):
    led.pseudonym_key("a" * 64)
    led.pseudonym_key("a" * 64)
    entries = led.entries("pseudonym_key")
    assert len(entries) == 1
    before = len(led.entries())
    with pytest.raises(
        UsageError,
        match=rf"differs from the one this ledger recorded at entry {entries[0].seq} "
        r"\(fingerprint a+\); set DPGOV_PSEUDONYM_KEY",
    ):
        led.pseudonym_key("b" * 64)
    assert len(led.entries()) == before


def test_one_patients_history_is_answered_and_every_lookup_recorded(led):
    led.add_block(dataset="flchain", block="overlap", patients=20, members=ids(90, 110))
    first = reserve(
        led,
        dataset="flchain",
        blocks=["1995", "overlap"],
        mechanism=RUN,
        budget=BUDGET,
        run_id="r1",
    )
    second = reserve(led, dataset="flchain", blocks=["1996"], mechanism=RUN, budget=BUDGET)
    led.release(second.id)
    who = ids(95, 96)[0]
    h = led.patient_history(who, actor="dpo@hospital", budget=BUDGET)
    assert h is not None and h.domain == "flchain" and h.composition == "fixed"
    assert [c.reservation for c in h.charges] == [first.id]  # once, though in two of its blocks
    assert h.charges[0].run_id == "r1" and h.charges[0].status == "pending"
    assert sorted(b.block for b in h.blocks) == ["1995", "overlap"]
    assert h.epsilon == pytest.approx(eps(RUN), rel=1e-6)
    assert set(h.to_dict()) == {
        "pseudonym",
        "domain",
        "epsilon",
        "delta",
        "composition",
        "charges",
        "blocks",
    }
    released = led.patient_history(ids(105, 106)[0], budget=BUDGET)
    assert released is not None and [c.status for c in released.charges] == ["pending", "released"]
    assert led.patient_history(ids(900, 901)[0]) is None
    lookups = led.entries("patient_lookup")
    assert [e.payload["found"] for e in lookups] == [True, True, False]
    assert lookups[0].actor == "dpo@hospital"
    assert lookups[0].payload["pseudonym_sha256"] == pseudonym_sha256(who)
    assert who not in str(lookups[0].payload)
    with pytest.raises(UsageError, match="not a pseudonym"):
        led.patient_history("MRN-12345")


def filter_eps(runs: list[DpSgdMechanism], delta: float) -> float:
    """The RDP filter's ε over FILTER_ORDERS (docs/composition.md), RDP from dp_accounting."""
    acc = rdp.RdpAccountant(orders=list(FILTER_ORDERS))
    for m in runs:
        inner = dp_event.PoissonSampledDpEvent(
            m.sample_rate, dp_event.GaussianDpEvent(m.noise_multiplier)
        )
        acc.compose(dp_event.SelfComposedDpEvent(inner, m.steps))
    n = len(FILTER_ORDERS)
    return min(
        r + math.log(n / delta) / (a - 1) for a, r in zip(FILTER_ORDERS, acc._rdp, strict=True)
    )


def test_block_status_reports_both_compositions_of_the_worst_class(led):
    led.add_block(dataset="flchain", block="overlap", patients=20, members=ids(90, 110))
    reserve(led, dataset="flchain", blocks=["1995"], mechanism=RUN, budget=BUDGET)
    reserve(led, dataset="flchain", blocks=["overlap"], mechanism=RUN, budget=BUDGET)
    st = status(led, "flchain", "1995")
    assert st.classes == 2 and st.composition == "fixed" and st.split == "train"
    assert st.epsilon_spent == st.epsilon_spent_fixed == pytest.approx(eps(RUN, RUN), rel=1e-6)
    assert st.epsilon_spent_adaptive == pytest.approx(filter_eps([RUN, RUN], 1e-5), rel=1e-9)
    assert st.epsilon_spent_adaptive > st.epsilon_spent_fixed  # adaptivity costs budget
    by_rdp = Budget(epsilon_per_block=3.0, delta=1e-5, accountant="rdp", composition="fixed")
    rdp_status = status(led, "flchain", "1995", by_rdp)
    assert rdp_status.composition == "fixed"  # budget.accountant gives the fixed figure
    assert (
        rdp_status.epsilon_spent
        == rdp_status.epsilon_spent_fixed
        == pytest.approx(epsilon([RUN, RUN], delta=1e-5, accountant="rdp"), rel=1e-9)
    )
    adaptive = Budget(epsilon_per_block=3.0, delta=1e-5, accountant="pld")  # the default rule
    ad = status(led, "flchain", "1995", adaptive)
    assert ad.composition == "adaptive" and ad.epsilon_spent == ad.epsilon_spent_adaptive
    assert ad.epsilon_spent_fixed == st.epsilon_spent_fixed  # both figures, either mode
    assert set(st.to_dict()) >= {
        "split",
        "composition",
        "classes",
        "epsilon_spent_fixed",
        "epsilon_spent_adaptive",
    }


def test_tampered_class_caches_cost_time_never_privacy(led):
    led.add_block(dataset="flchain", block="overlap", patients=20, members=ids(90, 110))
    reserve(led, dataset="flchain", blocks=["1995", "overlap"], mechanism=RUN, budget=BUDGET)
    reserve(led, dataset="flchain", blocks=["1996"], mechanism=RUN, budget=BUDGET)
    with led.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(class_cache_t)).scalar() >= 3
        assert conn.execute(sa.select(sa.func.count()).select_from(class_structures_t)).scalar()
    fresh = Ledger.open(str(led.engine.url))
    acc = get_accountant("pld")
    lie = {  # overlap's patients in no other block: each would have one charge
        "blocks": [["flchain", "1995"], ["flchain", "1996"], ["flchain", "overlap"]],
        "classes": [[[0], 100], [[1], 100], [[2], 20]],
    }
    with fresh.engine.begin() as conn:  # every cached state: nothing composed
        conn.execute(class_cache_t.update().values(state=acc.dumps(acc.empty())))
        conn.execute(class_structures_t.update().values(structure=canonical(lie).encode()))
    assert status(fresh, "flchain", "overlap").epsilon_spent == pytest.approx(
        eps(RUN, RUN), rel=1e-6
    )
    with pytest.raises(BudgetExceeded):
        reserve(fresh, dataset="flchain", blocks=["overlap"], mechanism=BIG, budget=BUDGET)
    fresh.close()


def test_membership_round_trips_on_postgres_and_sqlite(ledger_url):
    led = Ledger.open(ledger_url)
    led.add_block(dataset="d", block="a", patients=30, members=ids(0, 30))
    led.add_block(dataset="d", block="b", patients=30, members=ids(20, 50))
    reserve(led, dataset="d", blocks=["a"], mechanism=RUN, budget=BUDGET)
    reserve(led, dataset="d", blocks=["b"], mechanism=RUN, budget=BUDGET)
    assert status(led, "d", "a").epsilon_spent == pytest.approx(eps(RUN, RUN), rel=1e-6)
    assert led.verify_membership() == []
    assert led.patient_history(ids(25, 26)[0]) is not None
    led.close()


def test_sealed_class_structures_are_used_and_sealed_once(led):
    entry = led.seal_classes(actor="prepare")
    assert entry is not None and entry.payload["domains"] == ["flchain"]
    assert led.seal_classes() is None  # nothing new to seal
    fresh = Ledger.open(str(led.engine.url))
    with fresh.engine.connect() as conn:
        st = fresh._state(conn)
        structure, sealed = load_structure(conn, st.members, "flchain", {})
    assert sealed and dict(structure.classes) == {(0,): 100, (1,): 100}
    led.add_block(dataset="flchain", block="new", patients=5, members=ids(0, 5))
    assert led.seal_classes() is not None  # the membership changed: a new structure
    assert status(led, "flchain", "new").classes == 1
    fresh.close()


def test_budget_reads_each_class_epsilon_the_charge_recorded_and_it_is_the_composed_one(tmp_path):
    """A reservation records each reached class's ε at its δ beside the class seal; a later
    budget read in a fresh process takes it from the chain (no state load, no PLD evaluation)
    and it equals the composition computed independently."""
    url = f"sqlite:///{tmp_path / 'sealed.db'}"
    first = Ledger.open(url)
    first.add_block(dataset="flchain", block="1995", patients=100, members=ids(0, 100))
    first.add_block(dataset="flchain", block="overlap", patients=20, members=ids(90, 110))
    reserve(first, dataset="flchain", blocks=["1995"], mechanism=RUN, budget=BUDGET)
    reserve(first, dataset="flchain", blocks=["overlap"], mechanism=BIG, budget=Budget(
        epsilon_per_block=8.0, delta=1e-5, accountant="pld", composition="fixed"))  # fmt: skip
    first.close()
    fresh = Ledger.open(url)
    with fresh._read() as conn:
        sealed = fresh._state(conn).members.epsilons
    assert sorted(round(v, 9) for v in sealed.values()) == sorted(
        round(v, 9) for v in {eps(RUN), eps(BIG), eps(RUN, BIG)}
    )
    calls = []
    real = fresh._epsilon
    fresh._epsilon = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    spent = {s.block: s.epsilon_spent for s in fresh.budget(BUDGET, dataset="flchain")}
    assert calls == []  # every enforced figure came from the chain
    assert spent["1995"] == pytest.approx(eps(RUN, BIG), rel=1e-6)
    assert spent["overlap"] == pytest.approx(eps(RUN, BIG), rel=1e-6)
    other_delta = Budget(epsilon_per_block=8.0, delta=1e-6, accountant="pld", composition="fixed")
    again = fresh.block_status("flchain", "1995", other_delta).epsilon_spent
    assert calls and again == pytest.approx(epsilon([RUN, BIG], delta=1e-6), rel=1e-6)
    fresh.close()
