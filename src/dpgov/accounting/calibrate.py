"""Calibrating the noise multiplier against what a block has already spent.

Opacus calibrates from a fresh budget. A block that already holds charges can only afford
what remains, and "what remains" is not ``limit - spent``: ε composes sub-additively, so the
right question is the smallest σ for which the composition of the prior charges *and* the new
run stays within the limit. ε of a composition decreases monotonically in the new run's σ, so
a bisection in log σ finds it; we return the upper end of the final bracket, so the result
never overshoots.

Probes are bounded (:mod:`dpgov.accounting.bounded`). A probe σ whose run alone has a
hypothesis-test lower bound on ε above a target cannot fit under any sound accountant (the
composition costs at least its part), so it is answered without building its PLD; a probe the
accountant refuses as too costly counts as not fitting. Both only ever move the search to
larger σ, and the σ returned is one whose composition was computed and fits: the answer is the
smallest σ that fits *and* can be accounted within the bounds, never one that overshoots.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from dpgov.accounting.accountants import _check_delta, compose, get_accountant, quiet_absl
from dpgov.accounting.bounded import gaussian_step_points
from dpgov.accounting.crosscheck import over_limit_by_lower_bound
from dpgov.accounting.errors import AccountingInputError, AccountingTooCostly, InfeasibleBudget
from dpgov.accounting.kinds import check_domain
from dpgov.accounting.mechanism import DpSgdMechanism
from dpgov.accounting.pld import PLD_DISCRETIZATION

SIGMA_MIN = 0.1
SIGMA_MAX = 500.0
# Below this many points per step a PLD is cheaper to build than the lower bound (~ms).
LOWER_BOUND_FROM_POINTS = 50_000


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: Iterable[DpSgdMechanism] = (),
    accountant: str = "pld",
    tolerance: float = 0.01,
) -> float:
    """Smallest σ (within ``tolerance`` relative) with ε(prior ∘ DP-SGD(σ, q, T)) <= target.

    Raises :class:`InfeasibleBudget` when even σ = ``SIGMA_MAX`` cannot meet the target (the
    prior charges already use the budget up).
    """
    return calibrate_against_states(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        priors=[compose(list(prior), accountant)],
        accountant=accountant,
        tolerance=tolerance,
    )


def calibrate_against_states(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    priors: list[Any],
    accountant: str = "pld",
    tolerance: float = 0.01,
    targets: list[float] | None = None,
) -> float:
    """As :func:`calibrate_noise_multiplier`, for several composed prior states at once.

    ``priors`` are accountant states (one per block); ``targets`` the ε each may reach (default
    ``target_epsilon`` for all). The result is the smallest σ that satisfies every one.
    """
    _check_delta(delta)
    if not (isinstance(target_epsilon, int | float) and math.isfinite(target_epsilon)) or (
        target_epsilon <= 0
    ):
        raise AccountingInputError(f"target epsilon must be > 0, found {target_epsilon!r}")
    # validates q and T, and their domain
    check_domain(DpSgdMechanism(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps))
    if not 0 < tolerance < 1:
        raise AccountingInputError(f"tolerance must be in (0, 1), found {tolerance!r}")
    acc = get_accountant(accountant)
    goals = targets if targets is not None else [target_epsilon] * len(priors)
    if not priors:
        priors, goals = [acc.empty()], [target_epsilon]

    refusals: list[AccountingTooCostly] = []

    def excess(sigma: float) -> float:
        """max over priors of log(ε after the run / goal): <= 0 means σ fits everywhere.
        A positive value may be a lower bound of it (the probe surely does not fit), and +inf
        means the accountant refused the probe as too costly (counted as not fitting)."""
        mech = DpSgdMechanism(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        surely_over = _surely_over(mech, delta, min(goals), acc.name)
        if surely_over > 0:
            return surely_over
        try:
            return max(
                math.log(max(acc.epsilon(acc.add(state, mech), delta), 1e-300) / goal)
                for state, goal in zip(priors, goals, strict=True)
            )
        except AccountingTooCostly as err:
            refusals.append(err)
            return math.inf

    # RDP is a looser upper bound than PLD or PRV, so the RDP σ of the new run alone is a
    # cheap starting bracket; widen it geometrically until it holds (priors need more noise).
    hi = 1.0
    if acc.name != "rdp":
        try:
            hi = min(
                SIGMA_MAX,
                _rdp_bracket(
                    target_epsilon=min(goals), delta=delta, sample_rate=sample_rate, steps=steps
                ),
            )
        except InfeasibleBudget:
            hi = SIGMA_MAX
    g_hi = excess(hi)
    lo, g_lo = None, math.inf
    while g_hi > 0:
        if hi >= SIGMA_MAX:
            if math.isinf(g_hi) and refusals:  # even the largest σ cannot be accounted
                raise refusals[-1]
            raise InfeasibleBudget(
                f"no noise multiplier up to {SIGMA_MAX:g} keeps ε within {min(goals):g} at "
                f"δ={delta:g} for {steps} steps at sample rate {sample_rate:g}: the budget "
                f"is spent"
            )
        lo, g_lo = hi, g_hi
        hi = min(SIGMA_MAX, hi * 2)
        g_hi = excess(hi)
    if lo is None:  # hi fits: find a lower end that does not (RDP's σ is rarely 15% high)
        lo = max(SIGMA_MIN, hi / 1.15)
        g_lo = excess(lo)
        while g_lo <= 0:
            if lo <= SIGMA_MIN:
                return SIGMA_MIN
            hi, g_hi = lo, g_lo
            lo = max(SIGMA_MIN, lo / 2)
            g_lo = excess(lo)

    # Shrink the bracket [lo (does not fit), hi (fits)]: interpolate the root of the excess in
    # log σ (it is smooth and monotone), then probe just above and just below the estimate so
    # that one good interpolation closes the bracket in two evaluations. Bisect if that stalls.
    probe = (1 + tolerance) ** 0.45
    for attempt in range(40):
        if hi / lo <= 1 + tolerance:
            break
        x_lo, x_hi = math.log(lo), math.log(hi)
        if attempt < 6 and math.isfinite(g_lo) and g_lo != g_hi:
            x = x_hi - g_hi * (x_hi - x_lo) / (g_hi - g_lo)
            guess = math.exp(min(max(x, x_lo), x_hi))
            candidates = [min(hi, guess * probe), max(lo, guess / probe)]
        else:
            candidates = [math.sqrt(lo * hi)]
        for sigma in candidates:
            if not lo < sigma < hi:
                continue
            value = excess(sigma)
            if value <= 0:
                hi, g_hi = sigma, value
            else:
                lo, g_lo = sigma, value
    return hi


def _surely_over(mech: DpSgdMechanism, delta: float, goal: float, accountant: str) -> float:
    """log(lower bound / goal) when a hypothesis-test lower bound on ε of ``mech`` alone is
    above ``goal`` (then no composition with it fits: it costs at least this part), else 0.
    Only tried where the accountant's own work would be large (PLD: a wide one-step PMF)."""
    if accountant == "pld":
        if gaussian_step_points(mech.noise_multiplier, mech.sample_rate, PLD_DISCRETIZATION) < (
            LOWER_BOUND_FROM_POINTS
        ):
            return 0.0
    elif accountant != "prv":
        return 0.0
    lower = over_limit_by_lower_bound([mech], delta=delta, limit=goal)
    return 0.0 if lower is None else math.log(lower / goal)


def _rdp_bracket(*, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """σ meeting the target for the new run alone under RDP (cheap; an upper bracket).

    Probing small σ, dp_accounting warns through absl that an RDP order "failed to converge"
    and is left out: the bound stays valid (only looser), and this σ is only a bracket for the
    search under the ledger's accountant, so the warning is kept off the user's console."""
    with quiet_absl():
        return calibrate_against_states(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            priors=[],
            accountant="rdp",
            tolerance=0.01,
        )
