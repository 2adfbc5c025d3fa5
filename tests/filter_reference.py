"""A from-scratch reference for the RDP filter's ε (docs/composition.md), for tests.

Independent of :mod:`dpgov.accounting.filters`: the RDP of each run comes straight from
dp_accounting's ``RdpAccountant`` (composed over the runs), and the filter's ε is the formula
``min_α Σ RDP(α) + log(|Λ|/δ)/(α − 1)`` written out here again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dp_accounting import dp_event, rdp

from dpgov.accounting import DpSgdMechanism

# The default grid Λ, written out again (tests/unit/accounting/test_filters.py checks that
# dpgov's FILTER_ORDERS is this grid).
DEFAULT_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
)  # fmt: skip


def rdp_of(runs: Sequence[DpSgdMechanism], orders: Sequence[float]) -> list[float]:
    acc = rdp.RdpAccountant(orders=list(orders))
    for m in runs:
        inner = dp_event.PoissonSampledDpEvent(
            m.sample_rate, dp_event.GaussianDpEvent(m.noise_multiplier)
        )
        acc.compose(dp_event.SelfComposedDpEvent(inner, m.steps))
    return [float(x) for x in acc._rdp]


def filter_eps(
    runs: Sequence[DpSgdMechanism], delta: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> float:
    """The RDP filter's ε over ``orders`` of the composition of ``runs`` (0 for none)."""
    if not runs:
        return 0.0
    n = len(orders)
    return min(
        r + math.log(n / delta) / (a - 1) for a, r in zip(orders, rdp_of(runs, orders), strict=True)
    )


def admitted(
    runs: Sequence[DpSgdMechanism],
    *,
    epsilon: float,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> bool:
    """The admission rule itself: some α has Σ RDP(α) ≤ ε − log(|Λ|/δ)/(α − 1)."""
    n = len(orders)
    return any(
        r <= epsilon - math.log(n / delta) / (a - 1)
        for a, r in zip(orders, rdp_of(runs, orders), strict=True)
    )
