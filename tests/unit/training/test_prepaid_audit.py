"""The claim the prepaid audit's calibration rests on (dpgov.training.prepaid_audit): two runs
of DP-SGD (σ, q, T) on the same patients compose exactly as one run of (σ, q, 2T), checked
against dp_accounting's own accountants (independent of dpgov's wrappers) and through dpgov's
RDP vectors, which the ledger's filter sums."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.accounting.kinds import rdp_vector

ORDERS = (1.5, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def _dp_event(sigma: float, q: float, steps: int) -> object:
    import dp_accounting

    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, steps)


@settings(max_examples=12, deadline=None)
@given(
    sigma=st.floats(0.6, 4.0),
    q=st.floats(0.005, 0.3),
    steps=st.integers(1, 200),
)
def test_two_runs_compose_as_one_of_twice_the_steps_rdp(sigma: float, q: float, steps: int) -> None:
    from dp_accounting import rdp

    pair = rdp.RdpAccountant(list(ORDERS))
    pair.compose(_dp_event(sigma, q, steps))
    pair.compose(_dp_event(sigma, q, steps))
    once = rdp.RdpAccountant(list(ORDERS))
    once.compose(_dp_event(sigma, q, 2 * steps))
    assert pair.get_epsilon(1e-5) == pytest.approx(once.get_epsilon(1e-5), rel=1e-12)
    # dpgov's RDP vectors (the ledger's filter adds them) say the same, order by order
    mech = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
    two = [2 * v for v in rdp_vector(mech, ORDERS)]
    double = rdp_vector(mech.with_steps(2 * steps), ORDERS)
    for a, b in zip(two, double, strict=True):
        assert math.isclose(a, b, rel_tol=1e-12) or (math.isinf(a) and math.isinf(b))


@pytest.mark.parametrize(
    ("sigma", "q", "steps"), [(1.0, 0.05, 40), (1.6, 0.1, 26), (0.8, 0.02, 120)]
)
def test_two_runs_compose_as_one_of_twice_the_steps_pld(sigma: float, q: float, steps: int) -> None:
    from dp_accounting import pld

    pair = pld.PLDAccountant(value_discretization_interval=1e-4)
    pair.compose(_dp_event(sigma, q, steps))
    pair.compose(_dp_event(sigma, q, steps))
    once = pld.PLDAccountant(value_discretization_interval=1e-4)
    once.compose(_dp_event(sigma, q, 2 * steps))
    # the same privacy loss distribution, up to the discretisation (pessimistic either way)
    assert pair.get_epsilon(1e-5) == pytest.approx(once.get_epsilon(1e-5), rel=2e-3)
    # and dpgov's accountant (what the plan calibrates with) agrees
    mech = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
    ours = epsilon([mech, mech], delta=1e-5, accountant="pld")
    assert ours == pytest.approx(epsilon([mech.with_steps(2 * steps)], delta=1e-5), rel=2e-3)
    # the pair costs more than the run alone: the audit is a real charge
    assert ours > epsilon([mech], delta=1e-5) * 1.2
