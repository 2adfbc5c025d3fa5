"""The reservation protocol on a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import pytest

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.errors import BudgetExceeded, Refused, UsageError
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
from tests.filter_reference import admitted, filter_eps

BUDGET = Budget(epsilon_per_block=3.0, delta=1e-5, accountant="pld")
RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=300)


def members(n: int, first: int = 0) -> list[str]:
    """``n`` distinct pseudonyms (20 hex digits)."""
    return [f"{i:020x}" for i in range(first, first + n)]


@pytest.fixture
def ledger(ledger_url: str) -> Ledger:
    led = Ledger.open(ledger_url)
    # two blocks of distinct patients (blocks without members would reach each other)
    led.add_block(dataset="cohort", block="2001", patients=900, members=members(900))
    led.add_block(dataset="cohort", block="2002", patients=800, members=members(800, 900))
    yield led
    led.close()


def spent(led: Ledger, block: str, budget: Budget = BUDGET) -> float:
    """The accountant's composition of the block's charges (``epsilon_spent_fixed``: what the
    composition cache under test holds). The enforced figure under the default ``adaptive``
    rule is the RDP filter's, checked against :func:`tests.filter_reference.filter_eps`."""
    return led.block_status("cohort", block, budget).epsilon_spent_fixed


def enforced(led: Ledger, block: str, budget: Budget = BUDGET) -> float:
    return led.block_status("cohort", block, budget).epsilon_spent


def test_a_reservation_charges_every_named_block(ledger):
    res = ledger.reserve(dataset="cohort", blocks=["2001", "2002"], mechanism=RUN, budget=BUDGET)
    expected = epsilon([RUN], delta=1e-5)
    assert res.epsilon_run == pytest.approx(expected)
    assert spent(ledger, "2001") == pytest.approx(expected)
    assert spent(ledger, "2002") == pytest.approx(expected)
    for b in ("2001", "2002"):
        assert enforced(ledger, b) == pytest.approx(filter_eps([RUN], 1e-5), rel=1e-9)
        assert res.epsilon_after[b] == pytest.approx(enforced(ledger, b), rel=1e-9)


def test_pending_reservations_count_as_spent(ledger):
    ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    status = ledger.block_status("cohort", "2001", BUDGET)
    assert status.pending == 1 and status.charges == 1 and status.epsilon_spent > 0


def test_block_spend_is_the_composition_of_its_charges_not_the_sum(ledger):
    runs = [
        RUN,
        RUN.with_steps(100),
        DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.02, steps=200),
    ]
    for run in runs:
        ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=run, budget=BUDGET)
    assert spent(ledger, "2001") == pytest.approx(epsilon(runs, delta=1e-5), rel=1e-3)
    assert spent(ledger, "2001") < sum(epsilon([r], delta=1e-5) for r in runs)


def test_commit_replaces_the_plan_with_the_steps_actually_taken(ledger):
    res = ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    ledger.commit(res.id, steps=120)
    assert spent(ledger, "2001") == pytest.approx(epsilon([RUN.with_steps(120)], delta=1e-5))
    assert ledger.reservation(res.id).status == "committed"


def test_commit_of_more_steps_than_reserved_is_refused_and_changes_nothing(ledger):
    res = ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    before = len(ledger.entries())
    with pytest.raises(UsageError, match="steps 301 exceed the 300 reserved"):
        ledger.commit(res.id, steps=301)
    assert len(ledger.entries()) == before
    assert ledger.reservation(res.id).status == "pending"


def test_release_returns_the_budget(ledger):
    res = ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    ledger.release(res.id, reason="data loader failed before the first step")
    assert spent(ledger, "2001") == 0.0


def test_an_aborted_run_stays_fully_charged(ledger):
    res = ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    ledger.abort(res.id, reason="worker killed")
    assert spent(ledger, "2001") == pytest.approx(epsilon([RUN], delta=1e-5))
    with pytest.raises(UsageError, match="is aborted, not pending"):
        ledger.release(res.id)


def test_a_closed_reservation_cannot_be_closed_again(ledger):
    res = ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    ledger.commit(res.id)
    with pytest.raises(UsageError, match="is committed, not pending"):
        ledger.commit(res.id)


def test_over_budget_reservation_names_block_request_and_remainder_and_writes_nothing(ledger):
    big = DpSgdMechanism(noise_multiplier=0.6, sample_rate=0.05, steps=2000)
    ledger.reserve(dataset="cohort", blocks=["2002"], mechanism=RUN, budget=BUDGET)
    before = ledger.entries()
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(dataset="cohort", blocks=["2001", "2002"], mechanism=big, budget=BUDGET)
    message = str(info.value)
    assert "block '2001'" in message and "remaining 3.0000" in message
    assert "costs ε=" in message and "limit 3" in message
    assert ledger.entries() == before
    assert spent(ledger, "2001") == 0.0


def test_reservations_stop_exactly_at_the_limit(ledger):
    """Under the default ``adaptive`` rule: exactly as many runs as the RDP filter admits."""
    granted = 0
    with pytest.raises(BudgetExceeded):
        for _ in range(50):
            ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
            granted += 1
    feasible = max(n for n in range(1, 50) if admitted([RUN] * n, epsilon=3.0, delta=1e-5))
    assert granted == feasible
    assert enforced(ledger, "2001") <= 3.0
    # adaptivity costs runs: tight PLD of a fixed schedule would have allowed at least as many
    assert feasible <= max(n for n in range(1, 50) if epsilon([RUN] * n, delta=1e-5) <= 3.0)


def test_unknown_dataset_and_block_are_refused(ledger):
    with pytest.raises(UsageError, match="unknown dataset 'nope'"):
        ledger.reserve(dataset="nope", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    with pytest.raises(UsageError, match="unknown block '1999' in dataset 'cohort'"):
        ledger.reserve(dataset="cohort", blocks=["1999"], mechanism=RUN, budget=BUDGET)


def test_a_retired_block_cannot_be_charged(ledger):
    ledger.retire_block(dataset="cohort", block="2001", reason="budget spent")
    with pytest.raises(Refused, match="block '2001' of dataset 'cohort' is retired"):
        ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)


def test_add_block_is_idempotent_but_refuses_conflicting_facts(ledger):
    assert ledger.add_block(dataset="cohort", block="2001", patients=900) is None
    assert (
        ledger.add_block(dataset="cohort", block="2001", patients=900, members=members(900)) is None
    )
    with pytest.raises(UsageError, match="registered with 900 patients, not 901"):
        ledger.add_block(dataset="cohort", block="2001", patients=901)


def test_calibrated_sigma_fits_the_block_that_already_spent(ledger):
    ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    sigma = ledger.calibrate(
        dataset="cohort",
        blocks=["2001", "2002"],
        target_epsilon=2.9,
        sample_rate=0.01,
        steps=300,
        budget=BUDGET,
    )
    fresh = ledger.calibrate(
        dataset="cohort",
        blocks=["2002"],
        target_epsilon=2.9,
        sample_rate=0.01,
        steps=300,
        budget=BUDGET,
    )
    assert sigma > fresh  # the spent block needs more noise
    run = DpSgdMechanism(noise_multiplier=sigma, sample_rate=0.01, steps=300)
    res = ledger.reserve(dataset="cohort", blocks=["2001", "2002"], mechanism=run, budget=BUDGET)
    assert max(res.epsilon_after.values()) <= 3.0
    assert res.epsilon_run <= 2.9


def test_calibration_on_an_exhausted_block_is_refused(ledger):
    big = DpSgdMechanism(noise_multiplier=0.8, sample_rate=0.02, steps=1200)
    ledger.reserve(
        dataset="cohort",
        blocks=["2001"],
        mechanism=big,
        budget=Budget(epsilon_per_block=100, delta=1e-5),
    )
    with pytest.raises(Refused, match="the budget is spent"):
        ledger.calibrate(
            dataset="cohort",
            blocks=["2001"],
            target_epsilon=1.0,
            sample_rate=0.01,
            steps=100,
            budget=BUDGET,
        )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_other_accountants_compose_the_same_history(ledger, accountant):
    budget = Budget(epsilon_per_block=3.0, delta=1e-5, accountant=accountant)
    ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=budget)
    ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN.with_steps(50), budget=budget)
    assert spent(ledger, "2001", budget) == pytest.approx(
        epsilon([RUN, RUN.with_steps(50)], delta=1e-5, accountant=accountant), rel=1e-6
    )


def test_cached_composition_is_recomputed_when_stale(ledger):
    res = ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    first = spent(ledger, "2001")
    ledger.commit(res.id, steps=10)  # shrinks the charge: the cached state no longer applies
    assert spent(ledger, "2001") < first
    assert spent(ledger, "2001") == pytest.approx(epsilon([RUN.with_steps(10)], delta=1e-5))


def test_a_damaged_cache_is_never_trusted(ledger):
    import sqlalchemy as sa

    from dpgov.ledger.schema import cache_t

    ledger.reserve(dataset="cohort", blocks=["2001"], mechanism=RUN, budget=BUDGET)
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(cache_t).values(state=b"garbage"))
    assert spent(ledger, "2001") == pytest.approx(epsilon([RUN], delta=1e-5))


def test_generic_records_cannot_impersonate_ledger_operations(ledger):
    with pytest.raises(UsageError, match="written only by its own ledger operation"):
        ledger.append(kind="reservation", payload={})
    entry = ledger.append(kind="gate_decision", payload={"allowed": False})
    assert ledger.entries("gate_decision")[-1] == entry
