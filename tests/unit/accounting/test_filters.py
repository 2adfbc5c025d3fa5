"""The RDP filter over a grid of orders: the admission rule against an independent from-scratch
implementation (closed-form RDP of the Poisson-subsampled Gaussian at integer orders), its ε
against dp_accounting's PLD, and its monotonicity."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpgov.accounting import DpSgdMechanism
from dpgov.accounting.errors import AccountingInputError
from dpgov.accounting.filters import (
    FILTER_ORDERS,
    admits,
    check_orders,
    filter_epsilon,
    order_bounds,
)
from dpgov.accounting.kinds import rdp_vector

INTEGER_ORDERS = (2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def _rdp_sgm_integer(q: float, sigma: float, alpha: int) -> float:
    """RDP at integer α of the Poisson-subsampled Gaussian (add/remove neighbours), from the
    binomial expansion of Mironov, Talwar and Zhang 2019 (Sec. 3.3):
    A_α = Σ_k C(α, k) (1−q)^(α−k) q^k exp((k² − k) / (2σ²)); RDP = log(A_α) / (α − 1)."""
    terms = [
        math.lgamma(alpha + 1)
        - math.lgamma(k + 1)
        - math.lgamma(alpha - k + 1)
        + (alpha - k) * math.log1p(-q)
        + (k * math.log(q) if k else 0.0)
        + (k * k - k) / (2 * sigma * sigma)
        for k in range(alpha + 1)
    ]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


def _from_scratch_admits(
    history: list[tuple[float, float, int]],
    charge: tuple[float, float, int],
    epsilon: float,
    delta: float,
) -> bool:
    """Admit iff afterwards Σ RDP(α) ≤ ε − log(|Λ|/δ)/(α − 1) for some integer α of the grid."""
    for a in INTEGER_ORDERS:
        total = sum(t * _rdp_sgm_integer(q, s, int(a)) for s, q, t in [*history, charge])
        if total <= epsilon - math.log(len(INTEGER_ORDERS) / delta) / (a - 1):
            return True
    return False


def _vector(mechs: list[tuple[float, float, int]]) -> list[float]:
    out = [0.0] * len(INTEGER_ORDERS)
    for s, q, t in mechs:
        m = DpSgdMechanism(noise_multiplier=s, sample_rate=q, steps=t)
        out = [a + b for a, b in zip(out, rdp_vector(m, INTEGER_ORDERS), strict=True)]
    return out


def test_closed_form_reference_matches_dp_accounting_at_integer_orders() -> None:
    m = DpSgdMechanism(noise_multiplier=1.1, sample_rate=0.01, steps=100)
    got = rdp_vector(m, INTEGER_ORDERS)
    want = [100 * _rdp_sgm_integer(0.01, 1.1, int(a)) for a in INTEGER_ORDERS]
    assert got == pytest.approx(want, rel=1e-6)


mechanism = st.tuples(st.floats(0.6, 4.0), st.floats(0.001, 0.2), st.integers(1, 400))


@settings(max_examples=40, deadline=None)
@given(
    history=st.lists(mechanism, max_size=4),
    charge=mechanism,
    epsilon=st.floats(0.5, 12.0),
    delta=st.sampled_from([1e-6, 1e-5, 1e-3]),
)
def test_admission_matches_a_from_scratch_filter(
    history: list[tuple[float, float, int]],
    charge: tuple[float, float, int],
    epsilon: float,
    delta: float,
) -> None:
    decision = admits(
        _vector(history), _vector([charge]), epsilon=epsilon, delta=delta, orders=INTEGER_ORDERS
    )
    want = _from_scratch_admits(history, charge, epsilon, delta)
    if abs(decision.headroom) > 1e-7:  # away from the boundary, the two must agree exactly
        assert decision.admitted == want


def test_the_filter_is_never_tighter_than_the_tight_fixed_composition() -> None:
    """For a sequence fixed in advance, PLD is tight; the filter pays for adaptivity (a union
    bound over the orders and the RDP → DP conversion), so its ε is at least the PLD's."""
    from dpgov.accounting import epsilon

    mechs = [
        DpSgdMechanism(noise_multiplier=1.1, sample_rate=256 / 60000, steps=2345),
        DpSgdMechanism(noise_multiplier=0.9, sample_rate=512 / 60000, steps=1000),
    ]
    rdp = [0.0] * len(FILTER_ORDERS)
    for m in mechs:
        rdp = [a + b for a, b in zip(rdp, rdp_vector(m, FILTER_ORDERS), strict=True)]
    tight = epsilon(mechs, delta=1e-5, accountant="pld")
    assert filter_epsilon(rdp, 1e-5, FILTER_ORDERS) >= tight


def test_admitted_history_satisfies_its_bound_and_a_refusal_names_the_gap() -> None:
    m = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.05, steps=200)
    one = rdp_vector(m, FILTER_ORDERS)
    history = [0.0] * len(FILTER_ORDERS)
    admitted = 0
    while True:
        d = admits(history, one, epsilon=8.0, delta=1e-5)
        if not d.admitted:
            assert d.headroom < 0 and "RDP filter refuses" in d.reason()
            break
        history = [h + c for h, c in zip(history, one, strict=True)]
        admitted += 1
        assert d.epsilon_after <= 8.0 + 1e-12
    assert admitted >= 1
    assert filter_epsilon(history, 1e-5, FILTER_ORDERS) <= 8.0


@settings(max_examples=30, deadline=None)
@given(
    base=st.lists(st.floats(0, 5), min_size=len(FILTER_ORDERS), max_size=len(FILTER_ORDERS)),
    extra=st.lists(st.floats(0, 5), min_size=len(FILTER_ORDERS), max_size=len(FILTER_ORDERS)),
    charge=st.lists(st.floats(0, 2), min_size=len(FILTER_ORDERS), max_size=len(FILTER_ORDERS)),
)
def test_a_larger_history_is_never_admitted_where_a_smaller_is_refused(
    base: list[float], extra: list[float], charge: list[float]
) -> None:
    bigger = [b + e for b, e in zip(base, extra, strict=True)]
    small = admits(base, charge, epsilon=4.0, delta=1e-5)
    large = admits(bigger, charge, epsilon=4.0, delta=1e-5)
    assert not (large.admitted and not small.admitted)


def test_order_bounds_and_bad_input() -> None:
    b = order_bounds(8.0, 1e-5, (2.0, 11.0))
    assert b == pytest.approx([8.0 - math.log(2 / 1e-5), 8.0 - math.log(2 / 1e-5) / 10])
    with pytest.raises(AccountingInputError, match="every order must be > 1"):
        check_orders([1.0, 2.0])
    with pytest.raises(AccountingInputError, match="listed twice"):
        check_orders([2.0, 2.0])
    with pytest.raises(AccountingInputError, match="δ must be in"):
        order_bounds(1.0, 1.5, FILTER_ORDERS)
    with pytest.raises(AccountingInputError, match="RDP vectors of lengths"):
        admits([0.0], [0.0, 0.0], epsilon=1.0, delta=1e-5)
