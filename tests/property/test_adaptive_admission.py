"""The ledger's admission under ``budget.composition: adaptive`` is the RDP filter's rule,
checked against an independent implementation (:mod:`tests.filter_reference`: dp_accounting's
RdpAccountant composed directly, and the rule written out again): over random mechanisms,
budgets and grids Λ, a reservation is admitted exactly when afterwards some α in Λ has
Σ RDP(α) ≤ ε − log(|Λ|/δ)/(α − 1); and a σ calibrated against the budget left is admitted, a
slightly smaller one is not."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dpgov.accounting import DpSgdMechanism
from dpgov.accounting.calibrate import SIGMA_MIN
from dpgov.errors import BudgetExceeded, Refused
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
from tests.filter_reference import DEFAULT_ORDERS, admitted, filter_eps, rdp_of

mechanisms = st.builds(
    lambda s, q, t: DpSgdMechanism(noise_multiplier=s, sample_rate=q, steps=t),
    st.floats(0.7, 3.0),
    st.floats(0.002, 0.05),
    st.integers(10, 1500),
)
grids = st.one_of(
    st.just(DEFAULT_ORDERS),
    st.lists(st.sampled_from(DEFAULT_ORDERS), min_size=1, max_size=8, unique=True).map(
        lambda xs: tuple(sorted(xs))
    ),
)


def _headroom(runs, *, epsilon, delta, orders) -> float:
    n = len(orders)
    return max(
        epsilon - math.log(n / delta) / (a - 1) - r
        for a, r in zip(orders, rdp_of(runs, orders), strict=True)
    )


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    runs=st.lists(mechanisms, min_size=1, max_size=4),
    limit=st.floats(0.5, 8.0),
    delta=st.sampled_from([1e-3, 1e-5, 1e-7]),
    orders=grids,
)
def test_admission_is_the_rdp_filter_rule(tmp_path_factory, runs, limit, delta, orders):
    budget = Budget(epsilon_per_block=limit, delta=delta, orders=orders)
    url = f"sqlite:///{tmp_path_factory.mktemp('adm') / 'ledger.db'}"
    led = Ledger.open(url)
    try:
        led.add_block(dataset="d", block="b", patients=50, members=[f"{i:020x}" for i in range(50)])
        held: list[DpSgdMechanism] = []
        for m in runs:
            room = _headroom([*held, m], epsilon=limit, delta=delta, orders=orders)
            assume(abs(room) > 1e-7)  # not on the boundary, where rounding decides
            expected = admitted([*held, m], epsilon=limit, delta=delta, orders=orders)
            try:
                res = led.reserve(dataset="d", blocks=["b"], mechanism=m, budget=budget)
            except BudgetExceeded as err:
                assert not expected, "refused although the filter admits it"
                assert err.after == pytest.approx(filter_eps([*held, m], delta, orders), rel=1e-9)
                continue
            assert expected, "admitted although the filter refuses it"
            held.append(m)
            assert res.epsilon_after["b"] == pytest.approx(
                filter_eps(held, delta, orders), rel=1e-9
            )
        status = led.block_status("d", "b", budget)
        assert status.composition == "adaptive"
        assert status.epsilon_spent == pytest.approx(filter_eps(held, delta, orders), abs=1e-12)
        assert status.epsilon_spent <= limit
    finally:
        led.close()


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(prior=st.lists(mechanisms, min_size=0, max_size=2), q=st.floats(0.005, 0.03))
def test_a_calibrated_sigma_is_admitted_and_a_smaller_one_is_not(tmp_path_factory, prior, q):
    budget = Budget(epsilon_per_block=6.0, delta=1e-5)
    led = Ledger.open(f"sqlite:///{tmp_path_factory.mktemp('cal') / 'ledger.db'}")
    try:
        led.add_block(dataset="d", block="b", patients=50, members=[f"{i:020x}" for i in range(50)])
        for m in prior:
            if admitted([*prior[: prior.index(m)], m], epsilon=6.0, delta=1e-5):
                led.reserve(dataset="d", blocks=["b"], mechanism=m, budget=budget)
        held = [r.mechanism for r in led.reservations()]
        try:
            sigma = led.calibrate(
                dataset="d", blocks=["b"], target_epsilon=6.0, sample_rate=q, steps=300,
                budget=budget,
            )  # fmt: skip
        except Refused:
            assume(False)  # the budget is spent: nothing to calibrate
            raise
        run = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=300)
        assert admitted([*held, run], epsilon=6.0, delta=1e-5)
        smaller = DpSgdMechanism(noise_multiplier=sigma / 1.02, sample_rate=q, steps=300)
        if sigma > SIGMA_MIN:  # the filter binds (the run's own PLD ε is below its filter ε)
            assert not admitted([*held, smaller], epsilon=6.0, delta=1e-5)
        led.reserve(dataset="d", blocks=["b"], mechanism=run, budget=budget)  # admitted
    finally:
        led.close()
