"""Why the ledger enforces the RDP filter under adaptive retraining: on small discrete
mechanisms whose adaptive (ε, δ) can be computed exactly (the strategy of Tran, Räisä, Koskela
and Honkela 2026), the natural PLD filter overspends and dpgov's RDP filter does not.

Setting: one patient's bit x (neighbours x = 0 and x = 1). The first mechanism M1 is
randomised response RR(ε1). The analyst sees its output y1 and chooses the second mechanism
from a family of binary mechanisms (output 1 with probability a when x = 0, b when x = 1: every
randomised response and every "leak" that reveals x with some probability), among those the
filter admits after M1. For a fixed choice the privacy profile of the pair is the exact
hockey-stick divergence of the product distributions; for an adaptive choice (a mechanism per
branch y1) the hockey-stick splits over the branches:

    δ_P‖Q(ε) = Σ_y1 P1(y1) · H_{ε − L1(y1)}(M2^{y1}),  L1(y1) = log P1(y1)/Q1(y1),

with H_t(P‖Q) = Σ_o (P(o) − e^t Q(o))_+ (and the same with P and Q swapped). So the analyst's
worst adaptive strategy takes, in each branch, the admitted mechanism with the largest H at
that branch's shifted ε: computed exactly, by enumeration, no accountant involved.

- The natural PLD filter admits M2 when the tight (exact) profile of M1 followed by M2, fixed,
  is within (ε, δ). Its admitted set holds an RR whose loss is large right after y1 = 0 and a
  leak that costs δ whatever y1: each fits with M1, the adaptive mixture of the two does not.
- dpgov's RDP filter (:func:`dpgov.accounting.filters.admits`, the grid Λ of the default
  policy) admits M2 when Σ RDP(α) ≤ ε − log(|Λ|/δ)/(α − 1) for some α; RDP of a binary
  mechanism is computed here in closed form (max of both directions). Over everything it admits
  the worst adaptive strategy stays within δ, as Feldman and Zrnic 2021 (Thm 3.1) and Lécuyer
  2021 guarantee.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest

from dpgov.accounting.filters import FILTER_ORDERS, admits

EPS1 = 1.0  # the first run: randomised response RR(ε1)
TARGET_EPS, TARGET_DELTA = 2.0, 0.06

Binary = tuple[float, float]  # (P(out = 1 | x = 0), P(out = 1 | x = 1))


def rr(eps: float) -> Binary:
    p = math.exp(eps) / (1 + math.exp(eps))
    return (1 - p, p)  # outputs 1 mostly when x = 1


def hockey(m: Binary, t: float, *, swap: bool = False) -> float:
    """H_t(P‖Q) of one binary mechanism (P: x = 0; with ``swap``, H_t(Q‖P))."""
    a, b = (m[1], m[0]) if swap else m
    return max(0.0, a - math.exp(t) * b) + max(0.0, (1 - a) - math.exp(t) * (1 - b))


def branches(m1: Binary, *, swap: bool = False) -> list[tuple[float, float]]:
    """(probability under the first distribution, privacy loss) of M1's two outputs."""
    a, b = (m1[1], m1[0]) if swap else m1
    return [(a, math.log(a / b)), (1 - a, math.log((1 - a) / (1 - b)))]


def fixed_delta(m1: Binary, m2: Binary, eps: float) -> float:
    """Exact δ(ε) of M1 then M2 (fixed), the larger of both directions."""
    return max(
        sum(pr * hockey(m2, eps - loss, swap=s) for pr, loss in branches(m1, swap=s))
        for s in (False, True)
    )


def adaptive_worst(m1: Binary, family: list[Binary], eps: float) -> float:
    """Exact δ(ε) of the worst adaptive strategy choosing M2 from ``family`` after seeing y1:
    per direction, the best mechanism per branch (the branches add up)."""
    return max(
        sum(
            pr * max(hockey(m, eps - loss, swap=s) for m in family)
            for pr, loss in branches(m1, swap=s)
        )
        for s in (False, True)
    )


def rdp_binary(m: Binary, alpha: float) -> float:
    """RDP at order α of a binary mechanism, the larger of both directions (∞ for a leak)."""

    def d(p: tuple[float, float], q: tuple[float, float]) -> float:
        logs = []  # log of p_i^α q_i^(1−α), summed in log space (large α overflows)
        for pi, qi in zip(p, q, strict=True):
            if pi == 0:
                continue
            if qi == 0:
                return math.inf
            logs.append(alpha * math.log(pi) + (1 - alpha) * math.log(qi))
        top = max(logs)
        return (top + math.log(sum(math.exp(x - top) for x in logs))) / (alpha - 1)

    p, q = (m[0], 1 - m[0]), (m[1], 1 - m[1])
    return max(d(p, q), d(q, p))


def family() -> list[Binary]:
    """Randomised responses on a fine grid of ε, leaks of x = 0 or x = 1 with probability d,
    and a grid of asymmetric binary mechanisms."""
    out = [rr(e) for e in np.linspace(0.01, 3.0, 300)]
    out += [(d, 0.0) for d in np.linspace(0.001, 0.2, 200)]
    out += [(0.0, d) for d in np.linspace(0.001, 0.2, 200)]
    grid = [0.0, 0.001, 0.01, 0.03, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95, 0.99, 1.0]
    out += [(a, b) for a, b in product(grid, grid) if a != b and {a, b} != {0.0, 1.0}]
    return out


M1 = rr(EPS1)


def test_the_exact_profile_is_right_for_a_fixed_pair_of_randomised_responses():
    # RR(ε1) then RR(ε2) is pure (ε1 + ε2)-DP: δ vanishes at ε1 + ε2, not below
    assert fixed_delta(M1, rr(0.5), EPS1 + 0.5 + 1e-12) == pytest.approx(0.0, abs=1e-12)
    assert fixed_delta(M1, rr(0.5), EPS1 + 0.4) > 0


def test_the_natural_pld_filter_overspends_under_adaptivity():
    admitted = [m for m in family() if fixed_delta(M1, m, TARGET_EPS) <= TARGET_DELTA]
    assert admitted  # and every one of them, run after M1 regardless of y1, is within budget
    assert max(fixed_delta(M1, m, TARGET_EPS) for m in admitted) <= TARGET_DELTA
    worst = adaptive_worst(M1, admitted, TARGET_EPS)
    assert worst > TARGET_DELTA * 1.15, worst  # the adaptive sequence exceeds the target


def test_the_rdp_filter_does_not_overspend_under_adaptivity():
    orders = FILTER_ORDERS
    first = [rdp_binary(M1, a) for a in orders]
    admitted = []
    for m in family():
        charge = [rdp_binary(m, a) for a in orders]
        if not any(math.isfinite(c) for c in charge):
            continue  # infinite at every order: no RDP filter admits it
        decision = admits(first, charge, epsilon=TARGET_EPS, delta=TARGET_DELTA, orders=orders)
        if decision.admitted:
            admitted.append(m)
    assert len(admitted) > 50  # it admits real mechanisms, not only the trivial one
    assert not any(0.0 in m for m in admitted)  # never a leak: its RDP is infinite
    assert adaptive_worst(M1, admitted, TARGET_EPS) <= TARGET_DELTA


def test_the_pld_filters_counterexample_uses_mechanisms_each_within_budget_with_m1():
    """The two mechanisms of the counterexample, named: an RR loud right after y1 = 0 and a
    leak of x that costs its probability whatever y1."""
    admitted = [m for m in family() if fixed_delta(M1, m, TARGET_EPS) <= TARGET_DELTA]
    (p0, l0), (p1, l1) = branches(M1)
    best0 = max(admitted, key=lambda m: hockey(m, TARGET_EPS - l0))
    best1 = max(admitted, key=lambda m: hockey(m, TARGET_EPS - l1))
    assert best0 != best1  # the adaptive strategy needs both
    strategy = p0 * hockey(best0, TARGET_EPS - l0) + p1 * hockey(best1, TARGET_EPS - l1)
    assert strategy > TARGET_DELTA
    assert fixed_delta(M1, best0, TARGET_EPS) <= TARGET_DELTA
    assert fixed_delta(M1, best1, TARGET_EPS) <= TARGET_DELTA
