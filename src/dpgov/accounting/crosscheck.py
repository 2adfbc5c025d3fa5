"""Cross-checking a PLD ε against independent bounds on the same mechanisms.

The PLD accountant is tight; two other computations bracket it, and neither shares its code
(:func:`dpgov.accounting.build_pld`):

- above, RDP (dp_accounting's RDP accountant on each kind's DpEvent): an upper bound on ε that
  is looser than the PLD's everywhere we measured (PLD/RDP from 0.015 to 0.99);
- below, hypothesis tests on the mechanisms' outputs (:mod:`dpgov.accounting.lower_bounds`):
  no mechanism costs less ε than what one test can tell apart with it.

A PLD ε outside ``[lower · (1 - RELATIVE_SLACK), upper · (1 + RELATIVE_SLACK)]`` means the PLD
was built wrong: :class:`AccountantFailed` names both figures. Both bounds are cached per
mechanism, so checking costs a small fraction of composing the PLD.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dpgov.accounting.accountants import get_accountant, quiet_absl
from dpgov.accounting.errors import AccountantFailed
from dpgov.accounting.kinds import epsilon_lower_bound

# PLD's pessimistic discretisation error and float rounding stay far inside this; a wrongly
# built PLD (a wrong σ, q, T, neighbouring relation or estimate) moves ε well beyond it.
RELATIVE_SLACK = 1e-3
ABSOLUTE_SLACK = 1e-9


def rdp_upper_bound(mechanisms: Sequence[Any], delta: float) -> float:
    """ε at ``delta`` of the composition of ``mechanisms`` under RDP (an upper bound)."""
    acc = get_accountant("rdp")
    state = acc.empty()
    with quiet_absl():
        for m in mechanisms:
            state = acc.add(state, m)
        return acc.epsilon(state, delta)


def hypothesis_test_lower_bound(mechanisms: Sequence[Any], delta: float) -> float:
    """A lower bound on ε at ``delta`` of the composition of ``mechanisms``."""
    return epsilon_lower_bound(mechanisms, delta)


def over_limit_by_lower_bound(
    mechanisms: Sequence[Any], *, delta: float, limit: float
) -> float | None:
    """The hypothesis-test lower bound on ε at ``delta`` of the composition of ``mechanisms``
    when it is above ``limit`` (beyond its own rounding), else None.

    Sound for refusing before composing: every sound accountant's ε is at least the true ε,
    which is at least this bound (:mod:`dpgov.accounting.lower_bounds`), so a composition
    refused by it could not have fitted under any of them. (An RDP *upper* bound could only
    ever accept, and the ledger records the tight figure it composes, so RDP refuses nothing.)
    """
    if not mechanisms:
        return None
    lower = hypothesis_test_lower_bound(mechanisms, delta)
    return lower if lower * (1 - RELATIVE_SLACK) - ABSOLUTE_SLACK > limit else None


def check_pld_epsilon(mechanisms: Sequence[Any], *, delta: float, epsilon: float) -> None:
    """Raise :class:`AccountantFailed` when ``epsilon``, the PLD ε at ``delta`` of the
    composition of ``mechanisms``, lies outside the RDP upper bound or the test's lower bound."""
    if not mechanisms:
        return
    upper = rdp_upper_bound(mechanisms, delta)
    if epsilon > upper * (1 + RELATIVE_SLACK) + ABSOLUTE_SLACK:
        raise AccountantFailed(
            f"PLD ε={epsilon:.6g} at δ={delta:g} exceeds the RDP upper bound ε={upper:.6g} of "
            f"the same mechanisms: the PLD (dpgov.accounting.build_pld) is built wrong"
        )
    lower = hypothesis_test_lower_bound(mechanisms, delta)
    if epsilon < lower * (1 - RELATIVE_SLACK) - ABSOLUTE_SLACK:
        raise AccountantFailed(
            f"PLD ε={epsilon:.6g} at δ={delta:g} is below ε={lower:.6g}, a lower bound from a "
            f"hypothesis test on the same mechanisms: the PLD (dpgov.accounting.build_pld) is "
            f"built wrong and under-charges privacy"
        )


def prepare(mechanisms: Iterable[Any]) -> None:
    """Compute once what :func:`check_pld_epsilon` needs of each mechanism that does not
    depend on its length (a DP-SGD step's RDP), so that forked workers inherit it."""
    acc = get_accountant("rdp")
    with quiet_absl():
        for m in mechanisms:
            acc.add(acc.empty(), m)
