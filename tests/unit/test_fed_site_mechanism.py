"""The site-level DP-FedAvg kind (``fed_site_gaussian``) against independent references.

References: dp_accounting's own accountants on its own events (PLD under REPLACE_ONE, the
Gaussian of σ/2 under add/remove, RDP of the Gaussian), numerical integration of the Rényi
divergence and of the hockey-stick divergence of the mixtures themselves (numpy), and the RDP
filter's ε recomputed from the closed form in numpy. The ledger runs on a real SQLite file and
the audit on what that ledger holds.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import NeighboringRelation, dp_event, pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from scipy.stats import norm

from dpgov.accounting import (
    PLD_DISCRETIZATION,
    AccountingInputError,
    AccountingTooCostly,
    DpSgdMechanism,
    FedSiteMechanism,
    build_pld,
    check_pld_epsilon,
    effective_noise_multiplier,
    epsilon,
    mechanism_from_dict,
    mechanism_to_dict,
    rdp_vector,
    site_round_mechanism,
)
from dpgov.accounting.federated import (
    fed_site_lower_bound,
    fed_site_rdp_round,
    replace_one_step,
    replace_one_step_points,
)
from dpgov.ledger import Ledger
from dpgov.ledger.policies import set_policy
from dpgov.policy.load import load_policy
from dpgov.report.audit import AuditOptions, audit
from dpgov.report.checks.membership import read_membership
from dpgov.report.dvc_index import DvcIndex
from dpgov.report.ledger_snapshot import snapshot_ledger
from dpgov.tracking.anchor import Anchor
from dpgov.tracking.records import TrackingSnapshot

DELTA = 1e-5
ORDERS = (1.5, 2.0, 4.0, 8.0, 16.0, 32.0)


def replace_one_reference(sigma: float, q: float, rounds: int) -> float:
    """dp_accounting's PLD accountant under REPLACE_ONE, at the ledger's discretisation."""
    acc = pld.PLDAccountant(
        NeighboringRelation.REPLACE_ONE, value_discretization_interval=PLD_DISCRETIZATION
    )
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), rounds)
    return float(acc.get_epsilon(DELTA))


def log_mixture(x: np.ndarray, q: float, sigma: float, centre: float) -> np.ndarray:
    """log of (1-q)·N(0, σ²) + q·N(centre, σ²) at x."""
    log_n0 = -(x**2) / (2 * sigma**2)
    log_nc = -((x - centre) ** 2) / (2 * sigma**2)
    if q >= 1:
        return log_nc - math.log(sigma * math.sqrt(2 * math.pi))
    both = np.logaddexp(math.log1p(-q) + log_n0, math.log(q) + log_nc)
    return both - math.log(sigma * math.sqrt(2 * math.pi))


def renyi_of_pair(sigma: float, q: float, order: float) -> float:
    """D_α(P‖Q) of P = (1-q)N(0)+qN(-1), Q = (1-q)N(0)+qN(1), integrated on a fine grid in
    log space (the integrand's mass sits near -(2α-1) for the shifted component)."""
    span = 2 * order + 2 + 15 * sigma
    x = np.linspace(-span, span, 400_001)
    log_f = order * log_mixture(x, q, sigma, -1.0) + (1 - order) * log_mixture(x, q, sigma, 1.0)
    log_integral = float(special.logsumexp(log_f)) + math.log(x[1] - x[0])
    return log_integral / (order - 1)


# ------------------------------------------------------------------------- the mechanism


def test_fields_round_trip_and_are_read_back_by_kind():
    m = FedSiteMechanism(noise_multiplier=1, sample_rate=0.3, steps=5)
    assert m.noise_multiplier == 1.0 and isinstance(m.noise_multiplier, float)
    d = mechanism_to_dict(m)
    assert d == {
        "kind": "fed_site_gaussian",
        "noise_multiplier": 1.0,
        "sample_rate": 0.3,
        "steps": 5,
        "neighbouring": "replace_one",
    }
    back = mechanism_from_dict(json.loads(json.dumps(d)))
    assert type(back) is FedSiteMechanism and back == m and hash(back) == hash(m)
    odd = FedSiteMechanism(noise_multiplier=0.1 + 0.2, sample_rate=1 / 3, steps=7)
    assert mechanism_from_dict(json.loads(json.dumps(odd.to_dict()))) == odd  # lossless floats
    assert m.with_steps(2) == FedSiteMechanism(noise_multiplier=1.0, sample_rate=0.3, steps=2)
    with pytest.raises(AccountingInputError, match="unknown mechanism keys"):
        FedSiteMechanism.from_dict({**d, "clip": 1.0})
    with pytest.raises(AccountingInputError, match="missing"):
        FedSiteMechanism.from_dict({"kind": "fed_site_gaussian", "noise_multiplier": 1.0})
    with pytest.raises(AccountingInputError, match="not a dp_sgd"):
        DpSgdMechanism.from_dict(d)  # a site-level entry never reads back as DP-SGD
    with pytest.raises(AccountingInputError, match="replace_one"):
        FedSiteMechanism.from_dict({**d, "neighbouring": "add_remove"})


@pytest.mark.parametrize(
    "fields",
    [
        {"noise_multiplier": 0.0, "sample_rate": 0.5, "steps": 1},
        {"noise_multiplier": math.inf, "sample_rate": 0.5, "steps": 1},
        {"noise_multiplier": True, "sample_rate": 0.5, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 0},
        {"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 2.0},
    ],
)
def test_bad_fields_are_refused(fields):
    with pytest.raises(AccountingInputError):
        FedSiteMechanism(**fields)


def test_weights_scale_the_noise_by_the_largest_weight():
    assert effective_noise_multiplier(1.2, None) == 1.2
    assert effective_noise_multiplier(1.2, [0.25] * 4) == pytest.approx(1.2)
    assert effective_noise_multiplier(1.2, [0.5, 0.25, 0.25]) == pytest.approx(1.2 / 1.5)
    for bad in ([], [0.5, 0.6], [1.2, -0.2], [math.nan, 1.0]):
        with pytest.raises(AccountingInputError):
            effective_noise_multiplier(1.0, bad)
    m = site_round_mechanism(
        noise_multiplier=1.2, site_sample_rate=0.3, rounds=4, weights=[0.5, 0.25, 0.25]
    )
    assert m == FedSiteMechanism(noise_multiplier=1.2 / 1.5, sample_rate=0.3, steps=4)
    # q = 1 stays a site-level record (the decision documented in site_round_mechanism)
    full = site_round_mechanism(noise_multiplier=1.0, site_sample_rate=1.0)
    assert full == FedSiteMechanism(noise_multiplier=1.0, sample_rate=1.0, steps=1)


# ------------------------------------------------------------------------------- q = 1


@pytest.mark.parametrize(("sigma", "rounds"), [(1.5, 5), (3.0, 20)])
def test_without_sampling_a_round_is_the_gaussian_of_half_the_noise(sigma, rounds):
    m = FedSiteMechanism(noise_multiplier=sigma, sample_rate=1.0, steps=rounds)
    ours = epsilon([m], delta=DELTA)
    # dp_accounting's own PLD accountant on the Gaussian of σ/2 (add/remove) ...
    acc = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    acc.compose(dp_event.GaussianDpEvent(sigma / 2), rounds)
    assert ours == pytest.approx(acc.get_epsilon(DELTA), rel=2e-3)
    # ... on our event, and under REPLACE_ONE on the Gaussian of σ: the same mechanism
    acc = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    acc.compose(m.to_dp_event())
    assert ours == pytest.approx(acc.get_epsilon(DELTA), rel=2e-3)
    assert ours == pytest.approx(replace_one_reference(sigma, 1.0, rounds), rel=2e-3)
    assert ours == epsilon([DpSgdMechanism(noise_multiplier=sigma / 2, sample_rate=1.0,
                                           steps=rounds)], delta=DELTA)  # fmt: skip
    # RDP: the closed form against dp_accounting's RDP of the Gaussian of σ/2
    racc = rdp.RdpAccountant(orders=list(ORDERS))
    racc.compose(dp_event.GaussianDpEvent(sigma / 2), rounds)
    assert rdp_vector(m, ORDERS) == pytest.approx(list(racc._rdp), rel=1e-12)  # pylint: disable=protected-access
    default = rdp.RdpAccountant()  # the ledger's RDP accountant's grid
    default.compose(dp_event.GaussianDpEvent(sigma / 2), rounds)
    assert epsilon([m], delta=DELTA, accountant="rdp") == pytest.approx(
        default.get_epsilon(DELTA), rel=1e-9
    )


# ------------------------------------------------------------------------------- q < 1


@pytest.mark.parametrize(("sigma", "q", "rounds"), [(1.5, 0.3, 5), (2.0, 0.1, 40)])
def test_with_sampling_the_pld_is_dp_accountings_replace_one(sigma, q, rounds):
    m = FedSiteMechanism(noise_multiplier=sigma, sample_rate=q, steps=rounds)
    ours = epsilon([m], delta=DELTA)
    assert ours == pytest.approx(replace_one_reference(sigma, q, rounds), rel=1e-9)
    acc = pld.PLDAccountant(
        NeighboringRelation.REPLACE_ONE, value_discretization_interval=PLD_DISCRETIZATION
    )
    acc.compose(m.to_dp_event())  # the event means these rounds under REPLACE_ONE
    assert ours == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
    # amplification is real, and the figure passes the ledger's cross-checks
    full = epsilon([m.__class__(noise_multiplier=sigma, sample_rate=1.0, steps=rounds)],
                   delta=DELTA)  # fmt: skip
    assert ours < full
    check_pld_epsilon([m], delta=DELTA, epsilon=ours)
    lower = fed_site_lower_bound([m], DELTA)
    assert 0.5 * ours < lower <= ours


def test_the_lower_bound_is_tight_without_sampling():
    m = FedSiteMechanism(noise_multiplier=1.5, sample_rate=1.0, steps=10)
    assert fed_site_lower_bound([m], DELTA) == pytest.approx(epsilon([m], delta=DELTA), rel=1e-3)


def test_one_rounds_size_is_predicted_exactly():
    for sigma, q in ((1.0, 0.3), (0.7, 0.05)):
        step = replace_one_step(sigma, q, PLD_DISCRETIZATION)
        assert step._symmetric  # pylint: disable=protected-access
        size = len(step._pmf_remove.to_dense_pmf()._probs)  # pylint: disable=protected-access
        assert replace_one_step_points(sigma, q, PLD_DISCRETIZATION) == size


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
@pytest.mark.parametrize("q", [0.05, 0.3, 0.9])
def test_the_rdp_bound_holds_for_the_pair_and_is_below_the_unamplified(sigma, q):
    for order in (1.5, 2.0, 4.0, 8.0, 16.0):
        exact = renyi_of_pair(sigma, q, order)
        bound = fed_site_rdp_round(sigma, q, order)
        unamplified = 2 * order / sigma**2
        assert exact <= bound * (1 + 1e-6) + 1e-9, (sigma, q, order, exact, bound)
        assert bound <= unamplified
    assert renyi_of_pair(sigma, 1.0, 4.0) == pytest.approx(8.0 / sigma**2, rel=1e-6)
    assert fed_site_rdp_round(sigma, 1.0, 4.0) == pytest.approx(8.0 / sigma**2, rel=1e-12)


def test_the_rdp_bound_never_overflows_and_refuses_orders_at_most_one():
    assert math.isfinite(fed_site_rdp_round(1e-3, 0.5, 256.0))
    with pytest.raises(AccountingInputError):
        fed_site_rdp_round(1.0, 0.5, 1.0)


def hockey_stick_2d(q, sigma, x, x_prime, eps, n=601):
    """H_{e^ε}(μ_x ‖ μ_x') for μ_v = (1-q)N(0, σ²I) + qN(v, σ²I) in the plane, on a grid."""
    span = 2 + 8 * sigma
    g = np.linspace(-span, span, n)
    a, b = np.meshgrid(g, g, indexing="ij")

    def density(v):
        def phi(c):
            return np.exp(-((a - c[0]) ** 2 + (b - c[1]) ** 2) / (2 * sigma**2))

        return (1 - q) * phi((0.0, 0.0)) + q * phi(v)

    area = (g[1] - g[0]) ** 2 / (2 * math.pi * sigma**2)
    return float(np.sum(np.maximum(density(x) - math.exp(eps) * density(x_prime), 0)) * area)


@pytest.mark.parametrize(("q", "sigma"), [(0.2, 0.7), (0.6, 1.5)])
def test_the_antipodal_pair_dominates_updates_anywhere_in_the_ball(q, sigma):
    """docs/federated_accounting.md proves that the antipodal pair (-C, C) is the worst of
    any two updates in the ball; checked here (C = 1) at several ε and positions."""
    positions = [
        ((1.0, 0.0), (0.0, 1.0)),  # orthogonal, both on the sphere
        ((1.0, 0.0), (0.0, 0.0)),  # a site's update replaced by nothing
        ((1.0, 0.0), (-0.6, 0.0)),  # opposite, inside
        ((0.7, 0.0), (0.7 * math.cos(2.1), 0.7 * math.sin(2.1))),
        ((1.0, 0.0), (math.cos(2.6), math.sin(2.6))),
    ]
    for eps in (0.3, 1.5):
        worst = hockey_stick_2d(q, sigma, (-1.0, 0.0), (1.0, 0.0), eps)
        for x, x_prime in positions:
            assert hockey_stick_2d(q, sigma, x, x_prime, eps) <= worst + 1e-12


@pytest.mark.parametrize(("q", "sigma"), [(0.1, 0.7), (0.5, 1.5)])
def test_the_proofs_steps_hold_for_the_antipodal_pair(q, sigma):
    """The two steps of the docs' proof, in one dimension: advanced joint convexity
    H_γ'(μ_-1‖μ_1) = q·H_γ(φ_-1 ‖ (1-β)φ_0 + βφ_1), and the Neyman–Pearson bound at ‖a‖ = 1,
    ‖b‖ = 2 attained by it."""
    x = np.linspace(-30, 30, 300_001)
    dx = x[1] - x[0]

    def phi(c):
        return norm.pdf(x, c, sigma)

    def hs(gamma, p, r):
        return float(np.sum(np.maximum(p - gamma * r, 0)) * dx)

    p = np.linspace(1e-12, 1 - 1e-12, 200_001)
    z = norm.ppf(p)
    for eps in (0.2, 1.0, 2.5):
        gamma_prime = math.exp(eps)
        gamma = 1 + (gamma_prime - 1) / q
        beta = gamma_prime / gamma
        mixed = hs(gamma_prime, (1 - q) * phi(0) + q * phi(-1), (1 - q) * phi(0) + q * phi(1))
        inner = q * hs(gamma, phi(-1), (1 - beta) * phi(0) + beta * phi(1))
        bound = (
            p
            - gamma * (1 - beta) * norm.cdf(z - 1 / sigma)
            - gamma * beta * norm.cdf(z - 2 / sigma)
        )
        assert mixed == pytest.approx(inner, rel=1e-9, abs=1e-15)
        assert q * float(bound.max()) == pytest.approx(mixed, rel=1e-6, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    sigma=st.floats(0.5, 5.0),
    q=st.floats(0.01, 0.99),
    rounds=st.integers(1, 200),
)
def test_amplified_rdp_is_never_above_unamplified(sigma, q, rounds):
    amp = FedSiteMechanism(noise_multiplier=sigma, sample_rate=q, steps=rounds)
    full = amp.__class__(noise_multiplier=sigma, sample_rate=1.0, steps=rounds)
    assert all(
        a <= f for a, f in zip(rdp_vector(amp, ORDERS), rdp_vector(full, ORDERS), strict=True)
    )
    assert epsilon([amp], delta=DELTA, accountant="rdp") <= epsilon(
        [full], delta=DELTA, accountant="rdp"
    )


@settings(max_examples=6, deadline=None)
@given(
    sigma=st.floats(1.0, 4.0),
    q=st.floats(0.05, 0.9),
    rounds=st.integers(1, 30),
)
def test_amplified_pld_epsilon_is_never_above_unamplified(sigma, q, rounds):
    amp = FedSiteMechanism(noise_multiplier=sigma, sample_rate=q, steps=rounds)
    full = amp.__class__(noise_multiplier=sigma, sample_rate=1.0, steps=rounds)
    disc = 1e-3  # coarser than the ledger's: both are pessimistic at it
    e_amp = build_pld(amp, discretization=disc).get_epsilon_for_delta(DELTA)
    e_full = build_pld(full, discretization=disc).get_epsilon_for_delta(DELTA)
    assert e_amp <= e_full + 1e-9


def test_the_prv_accountant_does_not_undercharge_this_kind():
    m = FedSiteMechanism(noise_multiplier=1.0, sample_rate=0.3, steps=5)
    with pytest.raises(AccountingInputError, match="prv accountant composes DP-SGD"):
        epsilon([m], delta=DELTA, accountant="prv")


# ----------------------------------------------------------------- the ledger, end to end


def filter_reference(rdp_sum: list[float], orders: tuple[float, ...]) -> float:
    """The RDP filter's ε: min over Λ of Σ RDP(α) + log(|Λ|/δ)/(α − 1)."""
    slack = math.log(len(orders) / DELTA)
    return min(r + slack / (a - 1) for r, a in zip(rdp_sum, orders, strict=True))


def closed_form_rdp(sigma: float, q: float, rounds: int, orders: tuple[float, ...]) -> list[float]:
    a = np.asarray(orders)
    x = (a - 1) * 2 * a / sigma**2
    return list(rounds * np.logaddexp(np.log1p(-q), np.log(q) + x) / (a - 1))


@pytest.mark.parametrize("composition", ["adaptive", "fixed"])
def test_a_site_ledger_charges_reports_and_audits_site_rounds(tmp_path: Path, composition):
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'site.db'}")
    try:
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(
            "version: 1\nbudget: {epsilon_per_block: 60.0, delta: 1.0e-5, accountant: pld, "
            f"composition: {composition}}}\n"
        )
        policy = load_policy(policy_file)
        set_policy(ledger, policy, dataset=None, reason="site test", actor="tester")
        budget = policy.policy.budget
        ledger.add_block(
            dataset="d", block="b1", patients=30, members=[f"{i:020x}" for i in range(30)]
        )
        m = site_round_mechanism(noise_multiplier=1.0, site_sample_rate=0.3, rounds=5)
        if composition == "fixed":
            ledger.plan_schedule(dataset="d", blocks=["b1"], runs=[m, m], budget=budget)
        for steps in (None, 3):  # the second run stopped after 3 of its 5 rounds
            res = ledger.reserve(
                dataset="d",
                blocks=["b1"],
                mechanism=m,  # type: ignore[arg-type]  (the ledger's hints name DP-SGD only)
                budget=budget,
                policy_sha256=policy.sha256,
                data_version="abc.dir",
            )
            ledger.commit(res.id, steps=steps)

        (status,) = ledger.budget(budget, dataset="d")
        fixed_ref = replace_one_reference(1.0, 0.3, 8)
        adaptive_ref = filter_reference(closed_form_rdp(1.0, 0.3, 8, budget.orders), budget.orders)
        assert status.epsilon_spent_fixed == pytest.approx(fixed_ref, rel=1e-9)
        assert status.epsilon_spent_adaptive == pytest.approx(adaptive_ref, rel=1e-9)
        enforced = fixed_ref if composition == "fixed" else adaptive_ref
        assert status.composition == composition
        assert status.epsilon_spent == pytest.approx(enforced, rel=1e-9)
        stored = ledger.entries(kind="reservation")[-1].payload["mechanism"]
        assert stored["kind"] == "fed_site_gaussian"

        snap = snapshot_ledger(ledger, budget)
        head = snap.rows[-1]
        tracking = TrackingSnapshot(  # a store that answers, holding the head's anchor
            uri="sqlite:///m.db",
            anchors=[Anchor(seq=head.seq, hash=head.hash, time=head.time, run_id="anchor")],
        )
        report = audit(
            snap,
            tracking,
            DvcIndex(recorded={"abc.dir": "dvc.lock: data"}),
            policy,
            AuditOptions(now=datetime.now(UTC)),
            membership=read_membership(ledger, policy),
        ).to_dict()
        assert report["ok"], report["findings"]
        (block,) = report["blocks"]
        assert block["epsilon"] == pytest.approx(enforced, rel=1e-9)
        assert block["epsilon_fixed"] == pytest.approx(fixed_ref, rel=1e-9)
        assert block["epsilon_adaptive"] == pytest.approx(adaptive_ref, rel=1e-9)
    finally:
        ledger.close()


def test_accounting_is_bounded_before_anything_is_built():
    with pytest.raises(AccountingInputError, match="at least 2e-06"):
        epsilon([FedSiteMechanism(noise_multiplier=1e-6, sample_rate=1.0, steps=1)], delta=DELTA)
    with pytest.raises(AccountingTooCostly, match="one site-level round"):
        epsilon([FedSiteMechanism(noise_multiplier=0.05, sample_rate=1e-3, steps=1)], delta=DELTA)
    with pytest.raises(AccountingTooCostly, match="lower T"):
        epsilon([FedSiteMechanism(noise_multiplier=1.0, sample_rate=0.3, steps=10**6)], delta=DELTA)
