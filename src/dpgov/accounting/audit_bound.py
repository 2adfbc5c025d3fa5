"""The one-run audit bound: a lower bound on ε from guesses about canaries (scipy, lazily).

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023,
arXiv:2305.08846). ``m`` canaries are each included in the training data independently with
probability ½; after one run an auditor makes ``r`` guesses (in or out; it abstains on the
others) and ``v`` of them are right. If the run is ε-DP in every canary (add/remove one),
the number of right guesses is stochastically dominated by Binomial(r, p) with
``p = e^ε / (1 + e^ε)`` (their Theorem 3.1), so

    p-value(ε, δ=0) = P[Binomial(r, p) >= v].

With δ > 0 (their Theorem 5.2 and Algorithm 2) the p-value grows by ``2·m·δ·α`` with

    α = max_{1<=i<=v} (P[Binomial(r, p) >= v - i] - P[Binomial(r, p) >= v]) / i,

capped at 1. Every ε whose p-value is at most β = 1 - confidence is rejected: the run is not
(ε, δ)-DP, with confidence 1 - β. The reported lower bound is the largest such ε (0 when
none is rejected). Each p-value term grows with ε, so the set of rejected ε is an interval
[0, ε_lb) and a root search finds its end.

The *ceiling* is the bound with every guess right (v = r): the most this audit can show,
whatever the mechanism (for δ = 0 it is ``logit(β^(1/r))``).

Choosing the number of guesses after seeing the scores would invalidate the bound;
:func:`best_of` takes the best of a grid of guess counts fixed in advance, each tested at
β / len(grid) (a union bound, so the maximum keeps confidence 1 - β).

Hand-written: ``jax_privacy.auditing`` implements the same p-value but importing the package
pulls JAX, and ``opake-auditing`` pulls a second DP stack (docs/empirical_audit.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dpgov.accounting.errors import AccountingInputError

EPS_MAX = 200.0  # no audit with fewer than ~10^80 canaries can show more; the search stops


def _check(*, canaries: int, guesses: int, correct: int, delta: float, confidence: float) -> None:
    if canaries < 1:
        raise AccountingInputError(f"canaries: must be at least 1, found {canaries}")
    if not 0 <= guesses <= canaries:
        raise AccountingInputError(
            f"guesses: must be between 0 and the {canaries} canaries, found {guesses}"
        )
    if not 0 <= correct <= guesses:
        raise AccountingInputError(
            f"correct: must be between 0 and the {guesses} guesses, found {correct}"
        )
    if not 0 <= delta < 1:
        raise AccountingInputError(f"delta: must be in [0, 1), found {delta}")
    if not 0 < confidence < 1:
        raise AccountingInputError(f"confidence: must be in (0, 1), found {confidence}")


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[>= ``correct`` right guesses of ``guesses``] under the claim "(ε, δ)-DP" (an upper
    bound on it: Theorem 5.2 of Steinke et al. 2023)."""
    from scipy import special, stats

    _check(canaries=canaries, guesses=guesses, correct=correct, delta=delta, confidence=0.5)
    if epsilon < 0:
        raise AccountingInputError(f"epsilon: must be at least 0, found {epsilon}")
    if correct == 0:
        return 1.0
    p = float(special.expit(epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, p))
    if delta == 0:
        return beta
    import numpy as np

    i = np.arange(1, correct + 1)
    tails = stats.binom.sf(correct - i - 1, guesses, p) - beta
    alpha = float(np.max(tails / i))
    return min(beta + 2.0 * canaries * delta * alpha, 1.0)


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest ε that ``correct`` of ``guesses`` right rejects at ``confidence`` (0: none)."""
    from scipy import optimize

    _check(canaries=canaries, guesses=guesses, correct=correct, delta=delta, confidence=confidence)
    beta = 1.0 - confidence

    def margin(eps: float) -> float:  # > 0: (eps, delta) is rejected
        return beta - p_value(
            canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta
        )

    if margin(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while margin(hi) > 0:
        if hi >= EPS_MAX:
            return EPS_MAX
        lo, hi = hi, min(2 * hi, EPS_MAX)
    return float(optimize.brentq(margin, lo, hi, xtol=1e-9, rtol=1e-12))


def ceiling(*, canaries: int, guesses: int, delta: float, confidence: float = 0.95) -> float:
    """The bound if every guess were right: the most this audit can show."""
    return epsilon_lower_bound(
        canaries=canaries, guesses=guesses, correct=guesses, delta=delta, confidence=confidence
    )


@dataclass(frozen=True)
class AuditBound:
    """The outcome of one audit's guesses: the figures ``dpgov audit-model`` reports."""

    epsilon_lower_bound: float
    ceiling: float
    canaries: int
    guesses: int
    correct: int
    delta: float
    confidence: float


def guess(scores: Sequence[float], included: Sequence[bool], guesses: int) -> tuple[int, int]:
    """(guesses, right ones): "in" for the ``guesses // 2`` highest scores, "out" for the
    ``guesses - guesses // 2`` lowest, abstain on the rest (scores: higher = more likely in)."""
    n = len(scores)
    if len(included) != n:
        raise AccountingInputError(f"included: {len(included)} flags for {n} scores")
    if not 0 <= guesses <= n:
        raise AccountingInputError(f"guesses: must be between 0 and {n}, found {guesses}")
    order = sorted(range(n), key=lambda i: (scores[i], i))
    k_in = guesses // 2
    k_out = guesses - k_in
    right = sum(1 for i in order[n - k_in :] if included[i]) if k_in else 0
    right += sum(1 for i in order[:k_out] if not included[i])
    return guesses, right


def best_of(
    scores: Sequence[float],
    included: Sequence[bool],
    *,
    grid: Sequence[int],
    delta: float,
    confidence: float = 0.95,
) -> AuditBound:
    """The best bound over guess counts ``grid`` (fixed before the scores are seen), each at
    confidence ``1 - β/len(grid)``; the ceiling is the best ceiling over the same grid."""
    if not grid:
        raise AccountingInputError("guesses grid: empty")
    m = len(scores)
    beta = 1.0 - confidence
    each = 1.0 - beta / len(grid)
    best: AuditBound | None = None
    top = 0.0
    for r in grid:
        r_used, right = guess(scores, included, r)
        eps = epsilon_lower_bound(
            canaries=m, guesses=r_used, correct=right, delta=delta, confidence=each
        )
        top = max(top, ceiling(canaries=m, guesses=r_used, delta=delta, confidence=each))
        if best is None or eps > best.epsilon_lower_bound:
            best = AuditBound(eps, 0.0, m, r_used, right, delta, confidence)
    assert best is not None
    return AuditBound(
        best.epsilon_lower_bound, top, m, best.guesses, best.correct, delta, confidence
    )


def default_grid(canaries: int) -> tuple[int, ...]:
    """Guess counts fixed in advance: about 5 %, 10 %, 20 % and 50 % of the canaries."""
    out = sorted({max(2, math.ceil(canaries * f)) for f in (0.05, 0.1, 0.2, 0.5)})
    return tuple(r for r in out if r <= canaries) or (canaries,)
