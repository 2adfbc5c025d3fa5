"""Site-level rounds through Flower's own DifferentialPrivacyServerSideFixedClipping, charging
dpgov's ledgers (src/dpgov/federated/flower_dp.py).

Real SQLite ledgers (one per site, its own policy) and real Flower messages and strategy code:
only the grid's transport is skipped (the replies are built here from the messages sent). The
references are written out here: the clipped average and noise from a generator of the same
seed, and the RDP filter's closed form for the Gaussian of σ/2 (tests/unit/_federated_fixtures).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.supercore.task_identity import TaskIdentity

from dpgov.accounting import DpSgdMechanism, site_round_mechanism
from dpgov.data.federated_cohort import prepare_sites
from dpgov.federated.engine import (
    FIXED_DENOMINATOR,
    RECORD_AGGREGATOR,
    aggregator_of,
    planned_mechanism,
    run_rounds,
)
from dpgov.federated.flower_dp import AGGREGATOR, FlowerSiteRounds, strategy_classes
from dpgov.federated.ledgers import SiteLedgers
from dpgov.federated.local import build_site_model, get_arrays, load_site_data
from dpgov.federated.types import FederatedSpec, SiteSpec
from tests.unit._federated_fixtures import gaussian_filter_eps, ids, make_site

SIGMA = 4.0  # on the sum, in units of C: each participant's patients see the Gaussian of σ/2 = 2
CLIP = 1.0
LIMIT = 5.5  # filter ε after k Gaussians of σ 2: 2.82, 4.07, 5.07, 5.90: three fit, four do not
G = DpSgdMechanism(noise_multiplier=SIGMA / 2, sample_rate=1.0, steps=1)
NODES = {"a": 11, "b": 12, "c": 13}
SHAPES = [(3,), (2, 2)]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps messages with the running task's identity (a ServerApp's, in a run)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


@pytest.fixture
def three(tmp_path):
    sites = [
        make_site(tmp_path, n, {f"{n}1": ids(100 * i, 100 * i + 40)}, limit=LIMIT)
        for i, n in enumerate("abc")
    ]
    yield SiteLedgers(sites, run_tag="fedflower"), sites
    for s in sites:
        s.ledger.close()


def statuses(site) -> list[str]:
    return sorted(r.status for r in site.ledger.reservations())


def zeros() -> list[np.ndarray]:
    return [np.zeros(s, dtype=np.float32) for s in SHAPES]


def replies_to(messages, updates: dict[int, float], *, weight: int = 1) -> list[Message]:
    """Each node's reply: the global model plus ``updates[node]`` in every coordinate."""
    out = []
    for m in messages:
        new = [a + np.float32(updates[m.metadata.dst_node_id]) for a in zeros()]
        content = RecordDict(
            {
                "arrays": ArrayRecord(new),
                "metrics": MetricRecord({"num-examples": weight, "loss": 0.5}),
            }
        )
        out.append(Message(content, reply_to=m))
    return out


def clipped(value: float) -> list[np.ndarray]:
    d = [np.full(s, value, dtype=np.float64) for s in SHAPES]
    norm = np.sqrt(sum(float(np.sum(x * x)) for x in d))
    return [x * min(1.0, CLIP / norm) for x in d]


def rounds(led, *, min_sites=2, seed=None) -> FlowerSiteRounds:
    rng = np.random.default_rng(seed) if seed is not None else None
    return FlowerSiteRounds(led, noise_multiplier=SIGMA, clip=CLIP, min_sites=min_sites, rng=rng)


def test_the_noise_is_secret_and_of_flowers_scale(three):
    led, _ = three
    fl = rounds(led)
    assert isinstance(fl.strategy, DifferentialPrivacyServerSideFixedClipping)
    fl.strategy.num_sampled_clients = 2
    zero = ArrayRecord([np.zeros(200_000)])
    draws = []
    for _ in range(2):
        np.random.seed(0)
        state = np.random.get_state()[1].copy()
        draws.append(fl.strategy._add_noise_to_aggregated_arrays(zero).to_numpy_ndarrays()[0])
        assert np.array_equal(np.random.get_state()[1], state)  # np.random never drawn from
    assert not np.array_equal(draws[0], draws[1])  # the seed did not fix the noise
    for d in draws:  # Flower's compute_stdv: σ·C/n on the average of n = 2
        assert d.std() == pytest.approx(SIGMA * CLIP / 2, rel=0.01)
        assert abs(d.mean()) < 0.02
    # Flower's own method, by contrast, replays under np.random.seed: what we override
    parent = DifferentialPrivacyServerSideFixedClipping._add_noise_to_aggregated_arrays
    flower = []
    for _ in range(2):
        np.random.seed(0)
        flower.append(parent(fl.strategy, zero).to_numpy_ndarrays()[0])
    assert np.array_equal(flower[0], flower[1])


def test_a_refused_site_is_dropped_and_the_rest_reserve_and_pay(three):
    led, (a, b, c) = three
    for rnd in (1, 2, 3):  # c has spent three rounds: a fourth would pass its limit
        led.commit_round(led.reserve_round(rnd, {"c": G}))
    spent_c = led.spent()["c"]
    fl = rounds(led, seed=7)
    done = fl.configure(1, ["a", "b", "c"], NODES, zeros(), {"round": 1, "mode": "site"})
    assert done.participants == ["a", "b"]
    assert set(done.refused) == {"c"} and "budget refused" in done.refused["c"]
    assert sorted(m.metadata.dst_node_id for m in done.messages) == [11, 12]
    assert fl.strategy.num_sampled_clients == 2
    # the first try reserved at a and b, then released them when c refused
    assert statuses(a) == statuses(b) == ["pending", "released"]
    assert [ch.site for ch in done.charges] == ["a", "b"]
    pending = {r.id for s in (a, b) for r in s.ledger.reservations() if r.status == "pending"}
    assert {ch.reservation for ch in done.charges} == pending
    assert done.messages[0].content["config"]["server-round"] == 1

    out = fl.aggregate(1, replies_to(done.messages, {11: 1.0, 12: 0.1}))
    assert out is not None
    assert statuses(a) == statuses(b) == ["committed", "released"]
    assert len(c.ledger.reservations()) == 3 and led.spent()["c"] == spent_c
    # the release: the mean of the clipped updates plus N(0, (σC/2)²) from the same stream
    ref = np.random.default_rng(7)
    std = SIGMA * CLIP / 2
    want = [
        (x + y) / 2 + ref.normal(0.0, std, x.shape)
        for x, y in zip(clipped(1.0), clipped(0.1), strict=True)
    ]
    for got, w in zip(out.arrays, want, strict=True):
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-6)
    assert out.metrics == {"loss": 0.5, "denominator": 2.0, "noise_std": std}
    assert fl.accountant.num_releases == 1 and fl.accountant.pending == {}


def test_each_round_charges_each_participant_the_gaussian_of_half_sigma(three, tmp_path):
    led, (a, b, _) = three
    fl = rounds(led)
    spec = FederatedSpec(
        sites=tuple(SiteSpec(n, str(tmp_path / n)) for n in "abc"),
        mode="site",
        noise_multiplier=SIGMA,
        clip=CLIP,
    )
    coordinator_charge = planned_mechanism(a, spec)  # the coordinator's own path's charge
    assert coordinator_charge == site_round_mechanism(
        noise_multiplier=SIGMA, site_sample_rate=1.0, rounds=1
    )
    # an independent ledger charged DpSgdMechanism(σ/2, 1, 1) round by round, for comparison
    ref_site = make_site(tmp_path, "r", {"r1": ids(900, 940)}, limit=LIMIT)
    ref = SiteLedgers([ref_site], run_tag="ref")
    try:
        for rnd in (1, 2, 3):
            done = fl.configure(rnd, ["a", "b"], NODES, zeros(), {"round": rnd, "mode": "site"})
            assert done.participants == ["a", "b"] and not done.refused
            assert fl.aggregate(rnd, replies_to(done.messages, {11: 0.3, 12: -0.2})) is not None
            ref.commit_round(ref.reserve_round(rnd, {"r": G}))
            for s in (a, b):
                assert [r.mechanism for r in s.ledger.reservations()] == [coordinator_charge] * rnd
            spent = led.spent()
            assert spent["a"] == spent["b"] == pytest.approx(ref.spent()["r"], rel=1e-12)
            assert spent["a"] == pytest.approx(gaussian_filter_eps([SIGMA / 2] * rnd), rel=1e-9)
            assert spent["c"] == 0.0
        # a fourth round would pass every limit (5.90 > 5.5): below min_sites, nothing charged
        done = fl.configure(4, ["a", "b"], NODES, zeros(), {"round": 4, "mode": "site"})
        assert done.messages == [] and set(done.refused) == {"a", "b"}
        assert done.participants == [] and done.charges == []
        assert fl.accountant.pending == {}
        assert statuses(a) == ["committed"] * 3  # a refusing site writes nothing
    finally:
        ref_site.ledger.close()


def test_below_min_sites_after_a_refusal_nothing_is_reserved(three):
    led, (a, b, _) = three
    for rnd in (1, 2, 3):
        led.commit_round(led.reserve_round(rnd, {"c": G}))
    fl = rounds(led, min_sites=3)
    done = fl.configure(1, ["a", "b", "c"], NODES, zeros(), {"round": 1, "mode": "site"})
    assert done.messages == [] and done.participants == ["a", "b"]
    assert set(done.refused) == {"c"}
    assert fl.accountant.pending == {}
    assert statuses(a) == statuses(b) == ["released"]
    assert led.spent()["a"] == led.spent()["b"] == 0.0


def test_a_skipped_aggregation_and_a_crash_stay_charged(three):
    led, (a, b, _) = three
    fl = rounds(led)
    done = fl.configure(1, ["a", "b"], NODES, zeros(), {"round": 1, "mode": "site"})
    # one reply missing: Flower's strict check skips the aggregation; nothing is released,
    # but the sites trained and sent their updates: the charge stays (aborted, conservative)
    assert fl.aggregate(1, replies_to(done.messages[:1], {11: 0.3})) is None
    assert statuses(a) == statuses(b) == ["aborted"]
    one = gaussian_filter_eps([SIGMA / 2])
    assert led.spent()["a"] == pytest.approx(one, rel=1e-9) and fl.accountant.pending == {}
    # unequal weights: Flower raises after the round reserved, the charge stays
    done = fl.configure(2, ["a", "b"], NODES, zeros(), {"round": 2, "mode": "site"})
    bad = replies_to(done.messages, {11: 0.3, 12: 0.1})
    bad[1].content["metrics"]["num-examples"] = 5
    with pytest.raises(ValueError, match="equal client weights"):
        fl.aggregate(2, bad)
    assert statuses(a) == statuses(b) == ["aborted", "aborted"]
    assert led.spent()["a"] == pytest.approx(gaussian_filter_eps([SIGMA / 2] * 2), rel=1e-9)
    assert fl.accountant.pending == {}


def test_which_path_aggregates(tmp_path):
    sites = (SiteSpec("a", str(tmp_path)), SiteSpec("b", str(tmp_path)))
    assert aggregator_of(FederatedSpec(sites=sites, mode="site")) == AGGREGATOR
    assert aggregator_of(FederatedSpec(sites=sites, mode="site", site_sample_rate=1.0)) == (
        AGGREGATOR
    )
    sampled = FederatedSpec(sites=sites, mode="site", site_sample_rate=0.5)
    assert aggregator_of(sampled) == FIXED_DENOMINATOR
    weighted = FederatedSpec(sites=sites, mode="site", weights="records")
    assert aggregator_of(weighted) == FIXED_DENOMINATOR
    assert aggregator_of(FederatedSpec(sites=sites, mode="record")) == RECORD_AGGREGATOR
    fedavg_cls, dp_cls = strategy_classes()
    # Flower's accounted strategy accepts ours: FedAvg's own aggregate_train is kept
    assert fedavg_cls.aggregate_train is strategy_classes()[0].__mro__[1].aggregate_train
    assert issubclass(dp_cls, DifferentialPrivacyServerSideFixedClipping)


@pytest.mark.slow
def test_a_flower_simulation_runs_site_rounds_through_flowers_strategy(tmp_path):
    """The one full simulation: two sites, the second able to afford one round only, so the
    second round is retried without it (min_sites 1) and charged at the first alone."""
    cohort = prepare_sites(tmp_path / "data", sites=3, key=b"k" * 32, max_patients_per_site=60)
    prepared = cohort[:2]  # the cohort is cut into 3-5 sites: the federation takes two
    names = [p.name for p in prepared]
    spec = FederatedSpec(
        sites=tuple(SiteSpec(p.name, str(p.path)) for p in prepared),
        mode="site",
        rounds=2,
        local_steps=2,
        batch_size=16,
        noise_multiplier=SIGMA,
        clip=CLIP,
        min_sites=1,
        seed=1,
    )
    sites = [
        make_site(tmp_path, n, {f"{n}-b": ids(100 * i, 100 * i + 30)}, limit=LIMIT)
        for i, n in enumerate(names)
    ]
    led = SiteLedgers(sites, run_tag="fedsim")
    first, last = names
    for rnd in (1, 2):  # the second site can afford one round more (5.07), not two (5.90)
        led.commit_round(led.reserve_round(rnd, {last: G}))
    initial = get_arrays(build_site_model(spec, load_site_data(prepared[0].path)))
    try:
        result = run_rounds(spec, sites, led, initial)
        assert result.aggregator == AGGREGATOR and result.stopped is None
        one, two = result.rounds
        assert one.participants == names and not one.refused
        assert two.participants == [first] and set(two.refused) == {last}
        assert [c.site for c in two.charges] == [first]
        for r in result.rounds:  # each charge: a committed reservation of the round's kind
            for c in r.charges:
                info = led.site(c.site).ledger.reservation(c.reservation)
                assert info.status == "committed"
                assert info.mechanism == planned_mechanism(led.site(c.site), spec)
            assert r.metrics["denominator"] == len(r.participants)
            assert r.metrics["noise_std"] == pytest.approx(SIGMA * CLIP / len(r.participants))
        spent = led.spent()
    finally:
        for s in sites:
            s.ledger.close()
    assert spent[first] == pytest.approx(gaussian_filter_eps([SIGMA / 2] * 2), rel=1e-9)
    assert spent[last] == pytest.approx(gaussian_filter_eps([SIGMA / 2] * 3), rel=1e-9)
    assert any(not np.array_equal(x, y) for x, y in zip(result.arrays, initial, strict=True))
    assert [x.dtype for x in result.arrays] == [x.dtype for x in initial]
    assert set(result.evaluations) == set(names)
