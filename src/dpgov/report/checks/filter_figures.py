"""The audit's from-scratch RDP filter figures (issue 16, docs/composition.md).

Under ``budget.composition: adaptive`` the enforced ε of a history is the RDP filter's,
``min_α Σ RDP(α) + log(|Λ|/δ)/(α − 1)`` over the policy's grid Λ. The audit's compositions
are requests ``(state, δ, accountant)``; a filter figure is requested with the *token*
:func:`filter_token` in the accountant's place, and :func:`filter_value` computes it from
nothing: the RDP of each merged mechanism from dp_accounting (through the kind registry),
summed, then the filter's ε. Cheap (no PLD), so it is never rationed like the compositions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from dpgov.accounting import rdp_vector
from dpgov.accounting.accountants import quiet_absl
from dpgov.accounting.filters import FILTER_ORDERS, filter_epsilon
from dpgov.policy.schema import Budget
from dpgov.report.replay import Charge, StateKey, key_mechanisms

FILTER_PREFIX = "rdp-filter:"


def filter_token(orders: Sequence[float] | None) -> str:
    """The request's accountant slot for the RDP filter over ``orders`` (default Λ)."""
    grid = tuple(orders) if orders else FILTER_ORDERS
    return FILTER_PREFIX + ",".join(repr(float(a)) for a in grid)


def is_filter(accountant: str) -> bool:
    return accountant.startswith(FILTER_PREFIX)


def enforced_token(budget: Budget, domain: str) -> str:
    """What the policy enforces for ``domain``: the filter's token, or its accountant."""
    if budget.mode_for(domain) == "adaptive":
        return filter_token(budget.orders)
    return budget.accountant


def charge_token(c: Charge) -> str | None:
    """What a reservation's recorded ``epsilon_after`` figures are (None: mixed, unknown)."""
    if c.composition == "adaptive":
        return filter_token(c.orders)
    if c.composition == "fixed":
        return c.accountant
    return None


@functools.lru_cache(maxsize=4096)
def filter_value(key: StateKey, delta: float, token: str) -> float:
    """The RDP filter's ε at ``delta`` of the merged multiset ``key``, from nothing."""
    if not key:
        return 0.0
    orders = tuple(float(a) for a in token[len(FILTER_PREFIX) :].split(","))
    total = [0.0] * len(orders)
    for m in key_mechanisms(key):
        with quiet_absl():
            rdp = rdp_vector(m, orders)
        total = [a + b for a, b in zip(total, rdp, strict=True)]
    return filter_epsilon(total, delta, orders)


__all__ = [
    "FILTER_PREFIX",
    "charge_token",
    "enforced_token",
    "filter_token",
    "filter_value",
    "is_filter",
]
