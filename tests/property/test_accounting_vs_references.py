"""dpgov's accountants against independent references, on random histories (hypothesis).

References: dp_accounting's PLDAccountant at a 4× finer discretisation (and its optimistic
twin, bounding the reference's own error from below), dp_accounting's RdpAccountant, and for
PRV the fine PLD reference (PRV and PLD estimate the same quantity). The bounds the audit
cross-checks every PLD ε against (RDP above, a hypothesis test below) must hold on all of them,
and the bounded-accounting guard must never refuse what fits the reference.
"""

from __future__ import annotations

import math

import pytest
from dp_accounting import dp_event, pld, rdp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dpgov.accounting import (
    DpSgdMechanism,
    calibrate_noise_multiplier,
    check_pld_epsilon,
    epsilon,
    over_limit_by_lower_bound,
)
from dpgov.accounting.crosscheck import hypothesis_test_lower_bound

mechanisms = st.builds(
    lambda s, q, t: DpSgdMechanism(noise_multiplier=s, sample_rate=q, steps=t),
    st.floats(0.6, 4.0),
    st.floats(1e-3, 0.1),
    st.integers(1, 3000),
)
histories = st.lists(mechanisms, min_size=1, max_size=4)
deltas = st.sampled_from([1e-7, 1e-6, 1e-5, 1e-4, 1e-3])
SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_pld(history: list[DpSgdMechanism], delta: float, pessimistic: bool) -> float:
    fine = 5e-5
    composed = None
    for m in history:
        one = pld.privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=m.noise_multiplier,
            sampling_prob=m.sample_rate,
            value_discretization_interval=fine,
            pessimistic_estimate=pessimistic,
            use_connect_dots=pessimistic,
        ).self_compose(m.steps)
        composed = one if composed is None else composed.compose(one)
    assert composed is not None
    return float(composed.get_epsilon_for_delta(delta))


def reference_pld_accountant(
    history: list[DpSgdMechanism], delta: float, discretization: float = 5e-5
) -> float:
    acc = pld.PLDAccountant(value_discretization_interval=discretization)
    acc.compose(dp_event.ComposedDpEvent([m.to_dp_event() for m in history]))
    return float(acc.get_epsilon(delta))


@SETTINGS
@given(history=histories, delta=deltas)
def test_pld_is_within_one_percent_of_the_fine_reference_and_never_optimistic(history, delta):
    ref = reference_pld_accountant(history, delta)
    assume(0.2 <= ref <= 60)
    ours = epsilon(history, delta=delta, accountant="pld")
    assert ours <= ref * 1.01
    # never optimistic beyond the reference's own error: stay above its optimistic estimate
    assert ours >= reference_pld(history, delta, pessimistic=False) * (1 - 1e-9)


@SETTINGS
@given(history=histories, delta=deltas)
def test_pld_absolute_error_is_small_even_for_tiny_epsilon(history, delta):
    ref = reference_pld_accountant(history, delta)
    assume(ref <= 60)
    assert abs(epsilon(history, delta=delta) - ref) <= max(2e-3, 0.01 * ref)


@SETTINGS
@given(history=histories, delta=deltas)
def test_rdp_equals_dp_accountings_rdp_accountant(history, delta):
    acc = rdp.RdpAccountant()
    acc.compose(dp_event.ComposedDpEvent([m.to_dp_event() for m in history]))
    assert epsilon(history, delta=delta, accountant="rdp") == pytest.approx(
        acc.get_epsilon(delta), rel=1e-9
    )


@SETTINGS
@given(history=histories, delta=deltas)
def test_pld_passes_its_cross_check_and_the_lower_bound_is_below_the_reference(history, delta):
    ref = reference_pld_accountant(history, delta)
    assume(ref <= 60)
    check_pld_epsilon(history, delta=delta, epsilon=epsilon(history, delta=delta))
    # the test's bound is a lower bound on the true ε; the pessimistic reference is above it
    assert hypothesis_test_lower_bound(history, delta) <= ref * (1 + 1e-9)


prv_mechanisms = st.builds(
    lambda s, q, t: DpSgdMechanism(noise_multiplier=s, sample_rate=q, steps=t),
    st.floats(0.8, 3.0),
    st.floats(2e-3, 0.05),
    st.integers(10, 2000),
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(prv_mechanisms, min_size=1, max_size=3), delta=deltas)
def test_prv_agrees_with_the_pld_reference_within_its_error(history, delta):
    ref = reference_pld_accountant(history, delta)
    assume(0.2 <= ref <= 20)
    ours = epsilon(history, delta=delta, accountant="prv")
    # PRV returns the upper end of an estimate with eps_error 0.01
    assert ref * 0.99 - 0.011 <= ours <= ref * 1.03 + 0.011


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prior=st.lists(mechanisms, max_size=2),
    target=st.floats(0.5, 10.0),
    q=st.floats(2e-3, 0.05),
    steps=st.integers(10, 1500),
    accountant=st.sampled_from(["pld", "rdp"]),
)
def test_calibrated_sigma_never_overshoots_the_target(prior, target, q, steps, accountant):
    delta = 1e-5
    assume(epsilon(prior, delta=delta, accountant=accountant) < target * 0.9)
    sigma = calibrate_noise_multiplier(
        target_epsilon=target,
        delta=delta,
        sample_rate=q,
        steps=steps,
        prior=prior,
        accountant=accountant,
    )
    run = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
    assert epsilon([*prior, run], delta=delta, accountant=accountant) <= target
    if sigma > 0.1:  # and is tight: 3% less noise would overshoot
        tighter = run.__class__(noise_multiplier=sigma / 1.03, sample_rate=q, steps=steps)
        assert epsilon([*prior, tighter], delta=delta, accountant=accountant) > target


guarded_mechanisms = st.builds(
    lambda s, q, t: DpSgdMechanism(noise_multiplier=s, sample_rate=q, steps=t),
    st.floats(0.6, 4.0),
    st.one_of(st.just(1.0), st.floats(1e-4, 0.2)),  # q = 1: where the lower bound is tight
    st.integers(1, 500),
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(guarded_mechanisms, min_size=1, max_size=3), delta=deltas)
def test_the_guard_never_refuses_a_composition_within_its_tight_epsilon(history, delta):
    # the reference is pessimistic, so at or above the true ε: with the limit there, the
    # composition fits, and neither the lower bound nor the size bounds may refuse it
    ref = reference_pld_accountant(history, delta, discretization=1e-4)  # dp_accounting's own
    assume(ref <= 100)  # no policy allows more (budget.epsilon_per_block <= 100)
    assert over_limit_by_lower_bound(history, delta=delta, limit=ref) is None
    for m in history:
        assert over_limit_by_lower_bound([m], delta=delta, limit=ref) is None
    assert math.isfinite(epsilon(history, delta=delta))  # composed, not refused
