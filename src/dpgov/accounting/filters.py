"""Privacy filters valid under full adaptivity: the Rényi (RDP) filter over a grid of orders.

When the next mechanism may be chosen from earlier *outputs* (retraining after a refused gate,
after a drift check, after a look at the metrics), composing the realised sequence tightly
(PLD) is not a valid guarantee, and stopping when the composed PLD curve crosses the budget
(the natural "PLD filter") is invalid in general (Tran, Räisä, Koskela and Honkela 2026).
RDP composes under full adaptivity: a filter that admits the next mechanism only while the sum
of the RDP of everything admitted stays within a fixed bound at order α is (α, B)-RDP for the
whole adaptively chosen sequence (Feldman and Zrnic 2021, "Individual privacy accounting via a
Rényi filter", Thm 3.1; Lécuyer 2021, "Practical privacy filters and odometers with Rényi
differential privacy", Thm 1).

Here the filter runs over a grid Λ of orders fixed in advance (recorded with the policy). For
a target (ε, δ) the bound at order α is ``B(α) = ε − log(|Λ|/δ) / (α − 1)``: each order's
filter, converted to (ε, δ/|Λ|)-DP with the standard RDP → DP conversion
(ε = B(α) + log(1/δ')/(α − 1), Mironov 2017, Prop. 3), and a union bound over the |Λ| orders
gives (ε, δ)-DP for the filter that keeps going while *some* order is within its bound (the
output can be described by whichever order's filter has not halted; Lécuyer 2021, §4; Whitehouse
et al. 2023 discuss the same union-bound construction). A charge is admitted only if,
afterwards, ``Σ RDP(α) ≤ B(α)`` for some α in Λ.

This module is pure: RDP vectors in, decisions and the filter's ε out. The mechanisms' RDP
comes from the kind registry (:func:`dpgov.accounting.kinds.rdp_vector`, dp_accounting's RDP
accountant for DP-SGD).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dpgov.accounting.errors import AccountingInputError, InfeasibleBudget

FILTER_ORDERS: tuple[float, ...] = (
    1.25,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    10.0,
    12.0,
    16.0,
    20.0,
    24.0,
    32.0,
    48.0,
    64.0,
    128.0,
    256.0,
)
"""The default grid Λ (20 orders): dense where DP-SGD's optimum lies for ε of 1–10."""


def check_orders(orders: Sequence[float]) -> tuple[float, ...]:
    """Λ as a sorted tuple; every order must be finite and > 1, none twice."""
    out = tuple(float(a) for a in orders)
    if not out:
        raise AccountingInputError("filter orders: the grid is empty")
    bad = [a for a in out if not (math.isfinite(a) and a > 1.0)]
    if bad:
        raise AccountingInputError(f"filter orders: every order must be > 1, found {bad[0]!r}")
    if len(set(out)) != len(out):
        raise AccountingInputError("filter orders: an order is listed twice")
    return tuple(sorted(out))


def order_bounds(epsilon: float, delta: float, orders: Sequence[float]) -> list[float]:
    """``B(α) = ε − log(|Λ|/δ)/(α − 1)`` for each α of Λ (may be negative: that order can
    admit nothing)."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise AccountingInputError(f"filter: ε must be a finite number > 0, found {epsilon!r}")
    if not (0 < delta < 1):
        raise AccountingInputError(f"filter: δ must be in (0, 1), found {delta!r}")
    grid = check_orders(orders)
    slack = math.log(len(grid) / delta)
    return [epsilon - slack / (a - 1.0) for a in grid]


@dataclass(frozen=True)
class FilterDecision:
    """Whether the RDP filter admits a charge, and why."""

    admitted: bool
    order: float | None  # an order whose bound holds after the charge (the tightest), if any
    headroom: float  # max over α of B(α) − Σ RDP(α) after the charge (< 0: refused)
    epsilon_after: float  # the filter's ε for the history including the charge

    def reason(self) -> str:
        if self.admitted:
            return f"within the RDP filter at order α = {self.order:g}"
        return (
            "the RDP filter refuses: at every order α of the grid the composed RDP would "
            f"exceed its bound (closest by {-self.headroom:.4g})"
        )


def filter_epsilon(rdp: Sequence[float], delta: float, orders: Sequence[float]) -> float:
    """The smallest ε for which the filter over Λ at ``delta`` would still admit a history
    with RDP vector ``rdp``: ``min_α Σ RDP(α) + log(|Λ|/δ)/(α − 1)`` (the filter's ε)."""
    grid = check_orders(orders)
    if len(rdp) != len(grid):
        raise AccountingInputError(f"filter: {len(rdp)} RDP values for {len(grid)} orders")
    if not (0 < delta < 1):
        raise AccountingInputError(f"filter: δ must be in (0, 1), found {delta!r}")
    slack = math.log(len(grid) / delta)
    return min(r + slack / (a - 1.0) for r, a in zip(rdp, grid, strict=True))


def admits(
    history: Sequence[float],
    charge: Sequence[float],
    *,
    epsilon: float,
    delta: float,
    orders: Sequence[float] = FILTER_ORDERS,
) -> FilterDecision:
    """Admit ``charge`` (its RDP vector over Λ) after ``history`` (the summed RDP vector of
    everything admitted so far) iff afterwards ``Σ RDP(α) ≤ B(α)`` for some α in Λ."""
    grid = check_orders(orders)
    if not (len(history) == len(charge) == len(grid)):
        raise AccountingInputError(
            f"filter: RDP vectors of lengths {len(history)} and {len(charge)} for "
            f"{len(grid)} orders"
        )
    bounds = order_bounds(epsilon, delta, grid)
    after = [h + c for h, c in zip(history, charge, strict=True)]
    room = [b - s for b, s in zip(bounds, after, strict=True)]
    best = max(range(len(grid)), key=lambda i: room[i])
    ok = room[best] >= 0.0
    return FilterDecision(
        admitted=ok,
        order=grid[best] if ok else None,
        headroom=room[best],
        epsilon_after=filter_epsilon(after, delta, grid),
    )


def calibrate_filter(
    histories: Sequence[Sequence[float]],
    *,
    epsilon: float,
    delta: float,
    orders: Sequence[float],
    charge_rdp: Callable[[float], Sequence[float]],
    sigma_min: float,
    sigma_max: float,
    tolerance: float = 0.01,
) -> float:
    """The smallest σ (to a relative ``tolerance``, rounded up) such that the filter admits
    the charge ``charge_rdp(σ)`` after every history in ``histories`` (an empty list: after
    nothing). The RDP of the subsampled Gaussian decreases in σ at every order, so admission
    is monotone in σ and a bisection in log σ finds the threshold; the upper end of the final
    bracket is returned, so the result is always admitted. Raises :class:`InfeasibleBudget`
    when even ``sigma_max`` is refused."""
    grid = check_orders(orders)
    bounds = order_bounds(epsilon, delta, grid)
    hs = [list(h) for h in histories] or [[0.0] * len(grid)]

    def fits(sigma: float) -> bool:
        c = charge_rdp(sigma)
        return all(any(h[i] + c[i] <= bounds[i] for i in range(len(grid))) for h in hs)

    if not fits(sigma_max):
        raise InfeasibleBudget(
            f"no noise multiplier up to {sigma_max:g} keeps every history class within the "
            f"RDP filter at ε={epsilon:g}, δ={delta:g}: the budget is spent"
        )
    if fits(sigma_min):
        return sigma_min
    lo, hi = sigma_min, sigma_max
    while hi / lo > 1 + tolerance:
        mid = math.sqrt(lo * hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
