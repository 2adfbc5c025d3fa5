"""Each site's ledger in a federated round: per-site charging on real ledgers, the
patients two sites share composed across their ledgers, and Flower's own DP strategy charging
dpgov through LedgerPrivacyAccountant. References are closed forms written out in
tests/unit/_federated_fixtures.py and tests/filter_reference.py, not dpgov's accounting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from flwr.supercore.task_identity import TaskIdentity

from dpgov.accounting import DpSgdMechanism
from dpgov.errors import UsageError
from dpgov.federated.accountant import LedgerPrivacyAccountant, site_level_mechanism
from dpgov.federated.ledgers import SiteLedgers
from tests.filter_reference import filter_eps
from tests.unit._federated_fixtures import (
    DATASET,
    gaussian_exact_eps,
    gaussian_filter_eps,
    ids,
    make_site,
)

# A Gaussian release of noise multiplier 2 (q = 1): what a site-level round at σ = 4 charges
# each participant's patients (sensitivity 2C). Filter ε after k of them: 2.82, 4.07, 5.07, 5.90.
G = DpSgdMechanism(noise_multiplier=2.0, sample_rate=1.0, steps=1)
LIMIT = 5.5  # three fit, four do not
# Record-level DP-SGD at one site.
R = DpSgdMechanism(noise_multiplier=1.2, sample_rate=0.05, steps=20)  # ε 2.51


def statuses(site) -> list[str]:
    return sorted(r.status for r in site.ledger.reservations())


def charged_blocks(site) -> set[tuple[str, str]]:
    return {(r.dataset, b) for r in site.ledger.reservations() for b in r.blocks}


@pytest.fixture
def two(tmp_path):
    """Two hospitals of separate id domains, disjoint patients."""
    a = make_site(tmp_path, "a", {"a1": ids(0, 40), "a2": ids(40, 80)}, limit=LIMIT)
    b = make_site(tmp_path, "b", {"b1": ids(100, 150)}, limit=LIMIT)
    yield SiteLedgers([a, b], run_tag="fedtest"), a, b
    a.ledger.close()
    b.ledger.close()


def shared_sites(tmp_path, url_b: str | None = None):
    """Two sites of one id domain sharing patients 30..39 (in the training blocks of both)."""
    a = make_site(tmp_path, "a", {"a1": ids(0, 40)}, limit=LIMIT, domain="hosp")
    b = make_site(tmp_path, "b", {"b1": ids(30, 80)}, limit=LIMIT, domain="hosp", url=url_b)
    return SiteLedgers([a, b], run_tag="fedshared"), a, b


def test_each_site_charges_only_its_own_blocks(two):
    led, a, b = two
    charges = led.reserve_round(1, {"a": G, "b": G})
    assert charges["a"].reservation and charges["b"].reservation
    assert charges["a"].blocks == ("a1", "a2") and charges["b"].blocks == ("b1",)
    assert charged_blocks(a) == {(DATASET, "a1"), (DATASET, "a2")}
    assert charged_blocks(b) == {(DATASET, "b1")}
    assert statuses(a) == statuses(b) == ["pending"]  # pending counts as spent
    one = gaussian_filter_eps([2.0])
    assert led.spent() == {"a": pytest.approx(one, rel=1e-9), "b": pytest.approx(one, rel=1e-9)}
    led.commit_round(charges)
    assert statuses(a) == statuses(b) == ["committed"]
    # each block was registered with its members, domain and data version
    assert {x.block: x.data_version for x in a.ledger.blocks()} == {"a1": "a-v1", "a2": "a-v1"}
    assert led.shared_patients() == {"a": 0, "b": 0}
    assert led.shared_spent() == {}


def test_parallel_sites_do_not_charge_each_other(two):
    led, _, b = two
    for rnd in (1, 2):
        led.commit_round(led.reserve_round(rnd, {"a": G}))
    led.commit_round(led.reserve_round(3, {"a": G, "b": G}))
    spent = led.spent()
    assert spent["a"] == pytest.approx(gaussian_filter_eps([2.0] * 3), rel=1e-9)
    assert spent["b"] == pytest.approx(gaussian_filter_eps([2.0]), rel=1e-9)
    assert len(b.ledger.reservations()) == 1


def test_a_refusing_site_is_charged_nothing_and_the_others_go_on(two):
    led, a, b = two
    for rnd in (1, 2, 3):
        led.commit_round(led.reserve_round(rnd, {"b": G}))
    entries_b = len(b.ledger.entries())
    charges = led.reserve_round(4, {"a": G, "b": G})
    assert charges["b"].reservation is None
    assert charges["b"].refused and "\n" not in charges["b"].refused
    assert "budget refused" in charges["b"].refused
    assert len(b.ledger.entries()) == entries_b  # nothing written at the refusing site
    assert led.spent()["b"] == pytest.approx(gaussian_filter_eps([2.0] * 3), rel=1e-9)
    assert charges["a"].reservation is not None and charges["a"].refused is None
    led.commit_round(charges)  # the refused site is skipped
    assert statuses(a) == ["committed"]


def test_commit_release_abort(two):
    led, a, b = two
    charges = led.reserve_round(1, {"a": R, "b": R})
    with pytest.raises(UsageError, match="from 1 to the 20 reserved"):
        led.commit_round(charges, steps={"a": 25})
    assert statuses(a) == statuses(b) == ["pending"]  # checked before anything committed
    led.commit_round(charges, steps={"a": 10})
    (ra,) = a.ledger.reservations()
    assert ra.status == "committed" and ra.mechanism == R.with_steps(10)
    assert led.spent()["a"] == pytest.approx(filter_eps([R.with_steps(10)], 1e-5), rel=1e-9)
    assert led.spent()["b"] == pytest.approx(filter_eps([R], 1e-5), rel=1e-9)

    before = led.spent()
    released = led.reserve_round(2, {"a": G})
    led.release_round(released, "site a never trained")
    assert led.spent() == pytest.approx(before, rel=1e-12)
    crashed = led.reserve_round(3, {"a": G})
    led.abort_round(crashed, "site a crashed mid-round")
    assert a.ledger.reservation(crashed["a"].reservation).status == "aborted"
    assert led.spent()["a"] == pytest.approx(filter_eps([R.with_steps(10), G], 1e-5), rel=1e-9)


def test_a_round_that_cannot_start_leaves_nothing_pending(two):
    led, a, b = two
    with pytest.raises(UsageError, match="mechanism"):
        led.reserve_round(1, {"a": G, "b": "not a mechanism"})
    assert statuses(a) == ["released"] and statuses(b) == []
    with pytest.raises(UsageError, match="unknown site"):
        led.reserve_round(2, {"c": G})


def test_a_shared_patient_is_charged_at_both_ledgers_and_capped_across_them(tmp_path):
    led, a, b = shared_sites(tmp_path)
    shared = ids(30, 40)
    assert led.shared_patients() == {"hosp": 10}
    led.commit_round(led.reserve_round(1, {"a": G, "b": G}))
    for site in (a, b):  # each ledger charged its own blocks: the shared patient at both
        h = site.ledger.patient_history(shared[0], domain="hosp")
        assert h is not None and [c.status for c in h.charges] == ["committed"]
        assert site.ledger.budget(site.policy.policy.budget)[0].epsilon_spent == pytest.approx(
            gaussian_filter_eps([2.0]), rel=1e-9
        )
    lookups = {s.name: len(s.ledger.entries("patient_lookup")) for s in (a, b)}
    assert led.shared_spent() == {"hosp": pytest.approx(gaussian_filter_eps([2.0] * 2), rel=1e-9)}

    # round 2 at a only: the shared patients reach 3 releases in all (5.07 <= 5.5)
    led.commit_round(led.reserve_round(2, {"a": G}))
    # round 3 at b only: b's ledger alone would hold 2 releases (4.07), but across both
    # ledgers the shared patients would hold 4 (5.90 > 5.5): refused at b, nothing charged
    assert gaussian_filter_eps([2.0] * 2) < LIMIT < gaussian_filter_eps([2.0] * 4)
    entries_b = len(b.ledger.entries())
    charges = led.reserve_round(3, {"b": G})
    reason = charges["b"].refused
    assert charges["b"].reservation is None and reason is not None
    assert "10 patients" in reason and "'hosp'" in reason and "ε=5.5" in reason
    assert f"{gaussian_filter_eps([2.0] * 4):.4f}" in reason
    assert not any(p in reason for p in ids(0, 80))  # never a pseudonym
    assert len(b.ledger.entries()) == entries_b
    # the check read the ledgers only: no patient_lookup entry was written
    assert {s.name: len(s.ledger.entries("patient_lookup")) for s in (a, b)} == lookups
    # a round at both refuses at both (both hold the shared patients)
    both = led.reserve_round(4, {"a": G, "b": G})
    assert both["a"].refused and both["b"].refused
    assert "10 patients" in (both["a"].refused or "")
    assert [len(s.ledger.reservations()) for s in (a, b)] == [2, 1]


def test_charges_outside_the_runs_blocks_count_for_a_shared_patient(tmp_path):
    """A patient held at another site's ledger only in a block this run does not train on
    (an evaluation block, another dataset of the domain) has those charges composed too."""
    a = make_site(tmp_path, "a", {"a1": ids(0, 40)}, limit=LIMIT, domain="hosp")
    b = make_site(tmp_path, "b", {"b1": ids(100, 150)}, limit=LIMIT, domain="hosp")
    b.ledger.add_block(
        dataset="other", block="eval", patients=10, members=ids(30, 40), domain="hosp"
    )
    budget = b.policy.policy.budget
    for _ in range(3):
        r = b.ledger.reserve(dataset="other", blocks=["eval"], mechanism=G, budget=budget)
        b.ledger.commit(r.id)
    led = SiteLedgers([a, b], run_tag="fedother")
    assert led.shared_patients() == {"hosp": 0}  # not in two sites' training blocks
    charges = led.reserve_round(1, {"a": G, "b": G})
    assert charges["a"].refused and "10 patients" in charges["a"].refused
    assert charges["b"].reservation is not None  # b's training patients are not shared
    assert led.shared_spent() == {"hosp": pytest.approx(gaussian_filter_eps([2.0] * 3))}


def test_two_sites_on_one_ledger_are_composed_by_that_ledger(tmp_path):
    """Sites pointing at one ledger are read once (no double count): the ledger itself
    composes both sites' charges to the patients they share, one reservation after the other."""
    url = f"sqlite:///{tmp_path / 'one.db'}"
    a = make_site(tmp_path, "a", {"a1": ids(0, 40)}, limit=LIMIT, domain="hosp", url=url)
    b = make_site(tmp_path, "b", {"b1": ids(30, 80)}, limit=LIMIT, domain="hosp", url=url)
    led = SiteLedgers([a, b], run_tag="fedone")
    assert led.shared_patients() == {"hosp": 10}
    led.commit_round(led.reserve_round(1, {"a": G, "b": G}))
    assert led.shared_spent() == {}  # one ledger: nothing to compose across
    charges = led.reserve_round(2, {"a": G, "b": G})
    assert charges["a"].reservation is not None  # the shared patients at 3 releases
    assert charges["b"].refused and "budget refused" in charges["b"].refused  # 4: the ledger
    led.commit_round(charges)
    assert led.spent()["a"] == pytest.approx(gaussian_filter_eps([2.0] * 3), rel=1e-9)


def test_the_shared_check_under_fixed_composition_is_the_tight_one(tmp_path):
    """Under ``fixed`` the cross-ledger figure is the tight (PLD) ε of all the patient's
    releases: checked against the exact Gaussian ε (Balle and Wang 2018)."""
    # exact ε of k releases at σ 2: 1.99, 2.94, 3.71, 4.38, 4.98; limit between 3 and 4 releases
    limit = (gaussian_exact_eps([2.0] * 3) + gaussian_exact_eps([2.0] * 4)) / 2
    a = make_site(tmp_path, "a", {"a1": ids(0, 40)}, limit=limit, domain="h", composition="fixed")
    b = make_site(tmp_path, "b", {"b1": ids(30, 80)}, limit=limit, domain="h", composition="fixed")
    led = SiteLedgers([a, b], run_tag="fedfixed")
    led.register()
    for s in (a, b):  # fixed composition: only runs of a committed schedule
        s.ledger.plan_schedule(
            dataset=DATASET, blocks=s.blocks, runs=[G, G], budget=s.policy.policy.budget
        )
    led.commit_round(led.reserve_round(1, {"a": G, "b": G}))
    assert led.shared_spent()["h"] == pytest.approx(gaussian_exact_eps([2.0] * 2), rel=1e-5)
    charges = led.reserve_round(2, {"a": G, "b": G})
    assert charges["a"].refused and charges["b"].refused
    assert "fixed composition" in (charges["a"].refused or "")
    assert f"{gaussian_exact_eps([2.0] * 4):.4f}" in (charges["a"].refused or "")
    one = led.reserve_round(3, {"a": G})  # three releases in all fit
    assert one["a"].reservation is not None


@pytest.mark.postgres
def test_shared_patients_across_sqlite_and_postgresql(tmp_path, postgres_url):
    led, a, b = shared_sites(tmp_path, url_b=postgres_url)
    assert (a.ledger.dialect, b.ledger.dialect) == ("sqlite", "postgresql")
    led.commit_round(led.reserve_round(1, {"a": G, "b": G}))
    led.commit_round(led.reserve_round(2, {"a": G}))
    charges = led.reserve_round(3, {"a": G, "b": G})
    assert charges["a"].refused and charges["b"].refused
    assert led.spent() == {
        "a": pytest.approx(gaussian_filter_eps([2.0] * 2), rel=1e-9),
        "b": pytest.approx(gaussian_filter_eps([2.0]), rel=1e-9),
    }
    a.ledger.close()
    b.ledger.close()


# ---------------------------------------------------------------------- Flower's strategy


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps messages with the running task's identity (a ServerApp's, in a run)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def flower_round(strategy, rnd: int, arrays: ArrayRecord, nodes: list[int]):
    """One round of Flower's own DP strategy on real messages: the accounting check that
    configure_train runs, then aggregate_train over the sites' replies (clip, average, noise,
    compose)."""
    strategy.current_arrays = arrays
    config = ConfigRecord({"server-round": rnd})
    sent = [
        Message(
            RecordDict({"arrays": arrays, "config": config}), dst_node_id=n, message_type="train"
        )
        for n in nodes
    ]
    sent = list(strategy._prepare_accounting(rnd, sent))
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord([np.full(3, float(i + 1), dtype=np.float32)]),
                    "metrics": MetricRecord({"num-examples": 50}),  # equal weights
                }
            ),
            reply_to=m,
        )
        for i, m in enumerate(sent)
    ]
    return strategy.aggregate_train(rnd, replies)


def test_flower_dp_strategy_charges_the_site_ledgers(two, task_identity):
    led, a, b = two
    acc = LedgerPrivacyAccountant(led)
    assert acc.config.sampling_method is SamplingMethod.NO_AMPLIFICATION
    assert acc.config.neighboring_relation is NeighboringRelation.ADD_OR_REMOVE_ONE
    assert (acc.config.population_size, acc.config.max_epsilon) == (2, LIMIT)
    assert acc.config.target_delta == 1e-5
    sigma = 4.0  # on the sum, in units of C: σ/2 = 2 for a site's patients
    strategy = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(fraction_train=1.0), sigma, 1.0, 2, accountant=acc
    )
    flower = RdpAccountant(acc.config)  # Flower's own view of the same run: a site's unit
    arrays = ArrayRecord([np.zeros(3, dtype=np.float32)])
    for rnd in (1, 2, 3):
        acc.begin_round(rnd, ["a", "b"])
        new, _ = flower_round(strategy, rnd, arrays, [1, 2])
        assert new is not None
        arrays = new
        flower.compose(strategy_event(sigma))
        spent = acc.get_privacy_spent()
        assert spent.num_releases == rnd
        assert spent.epsilon == pytest.approx(gaussian_filter_eps([2.0] * rnd), rel=1e-9)
        for s in (a, b):
            assert statuses(s) == ["committed"] * rnd
            # what Flower's σ charges a site (the site-level kind, or DP-SGD at σ/2 before it)
            assert {r.mechanism for r in s.ledger.reservations()} == {site_level_mechanism(sigma)}
        # a patient's figure is above Flower's client-level one for the same releases
        assert flower.get_epsilon(1e-5) < spent.epsilon
    assert acc.pending == {}
    assert acc.get_epsilon(1e-6) == pytest.approx(gaussian_filter_eps([2.0] * 3, 1e-6), rel=1e-9)
    # round 4 would bring every patient to 5.90 > 5.5: Flower raises, nothing is charged
    before = (led.spent(), [len(s.ledger.reservations()) for s in (a, b)])
    acc.begin_round(4, ["a", "b"])
    with pytest.raises(PrivacyBudgetExhausted, match="exceed max_epsilon"):
        flower_round(strategy, 4, arrays, [1, 2])
    assert set(acc.last_refused) == {"a", "b"}
    assert "budget refused" in acc.last_refused["a"]
    assert (led.spent(), [len(s.ledger.reservations()) for s in (a, b)]) == before
    assert acc.pending == {} and acc.num_releases == 3
    with pytest.raises(NotImplementedError, match="get_epsilon"):
        acc.get_delta(1.0)


def strategy_event(sigma: float):
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    return GaussianPrivacyEvent(noise_multiplier=sigma, sample_size=2, population_size=2)


def test_one_refusing_participant_refuses_the_round_and_releases_the_others(two):
    led, a, _ = two
    for rnd in (1, 2, 3):
        led.commit_round(led.reserve_round(rnd, {"b": G}))
    acc = LedgerPrivacyAccountant(led)
    acc.begin_round(4, ["a", "b"])
    assert acc.would_exceed(strategy_event(4.0)) is True
    assert set(acc.last_refused) == {"b"}
    assert statuses(a) == ["released"]  # reserved, then returned: nothing charged
    assert led.spent()["a"] == 0.0
    # the engine may run the round without the refusing site
    acc.begin_round(4, ["a"])
    solo = strategy_event(4.0).__class__(noise_multiplier=4.0, sample_size=1, population_size=2)
    assert acc.would_exceed(solo) is False
    with pytest.raises(ValueError, match="noise multiplier"):
        acc.compose(strategy_event(4.0).__class__(3.0, 1, 2))
    acc.compose(solo)
    assert statuses(a) == ["committed", "released"]


def test_accountant_state_round_trips_through_json(two):
    led, a, b = two
    acc = LedgerPrivacyAccountant(led)
    acc.begin_round(1, ["a", "b"])
    assert acc.would_exceed(strategy_event(4.0)) is False
    state = json.loads(json.dumps(acc.state_dict()))
    again = LedgerPrivacyAccountant(SiteLedgers([a, b], run_tag="fedtest"))
    again.load_state_dict(state)
    assert set(again.pending) == {"a", "b"}
    again.compose(strategy_event(4.0))
    assert statuses(a) == statuses(b) == ["committed"] and again.num_releases == 1
    with pytest.raises(ValueError, match="not pending"):
        LedgerPrivacyAccountant(led).load_state_dict(state)
    # a reserved round that never released is settled by the engine
    acc2 = LedgerPrivacyAccountant(led)
    acc2.begin_round(2, ["a"])
    assert acc2.would_exceed(strategy_event(4.0).__class__(4.0, 1, 2)) is False
    with pytest.raises(UsageError, match="still holds reservations"):
        acc2.begin_round(3, ["a"])
    acc2.abort_pending("the server crashed")
    assert statuses(a) == ["aborted", "committed"]
