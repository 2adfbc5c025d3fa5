"""The gate's composition lines (issue 16): both figures of each block, and the rule enforced.

The gate's ``block_budget`` lines judge the ε the ledger enforces for each block
(``BlockStatus.epsilon_spent``: the RDP filter's under ``budget.composition: adaptive``, the
accountant's tight composition under ``fixed``, docs/composition.md). Beside each, one
``composition:<dataset>/<block>`` line shows both figures and says which one is enforced, so
that a reader of the decision sees what adaptivity costs. These lines inform: they pass
whenever both figures are known (the block_budget line refuses an overspent block).

Pure, like :mod:`dpgov.gate.decision`: the figures arrive in :class:`BlockFigures` (the
ledger facts' blocks, as :mod:`dpgov.gate.service` collects them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from dpgov.contracts import show_spent
from dpgov.gate.facts import CandidateFacts
from dpgov.policy.schema import Policy


class _LedgerBlocks(Protocol):
    """What is read of :class:`dpgov.gate.decision.LedgerFacts` (named here without importing
    it: the decision imports this module)."""

    def block(self, dataset: str, block: str) -> Any: ...


# (name, observed, limit, passed, reason): the fields of dpgov.gate.decision.Check
Line = tuple[str, Any, Any, bool, str]


@dataclass(frozen=True)
class Figures:
    """Both figures of a block's worst-off patient and the rule its domain enforces."""

    epsilon_adaptive: float
    epsilon_fixed: float
    composition: str  # adaptive | fixed


def figures_of(status: Any) -> Figures:
    """The figures of a :class:`dpgov.ledger.BlockStatus`."""
    return Figures(
        epsilon_adaptive=status.epsilon_spent_adaptive,
        epsilon_fixed=status.epsilon_spent_fixed,
        composition=status.composition,
    )


def composition_lines(
    policy: Policy,
    facts: CandidateFacts,
    led: _LedgerBlocks,
) -> list[Line]:
    """One line per block of the candidate: both figures, and which one is enforced (the
    figures ride on :class:`dpgov.gate.figures.LedgerFactsWithFigures`; plain ledger facts
    give lines that say they were not collected)."""
    b = policy.budget
    figures: dict[str, Figures] = getattr(led, "figures", None) or {}
    out: list[Line] = []
    for name in facts.blocks:
        check = f"composition:{facts.dataset}/{name}"
        f = figures.get(name)
        if led.block(facts.dataset, name) is None or f is None:
            out.append((check, None, None, True, "figures not collected"))
            continue
        fixed_rule = f"{b.accountant}, valid only for a schedule committed in advance"
        adaptive = (
            f"adaptive ε={show_spent(f.epsilon_adaptive, 4)} (RDP filter, {len(b.orders)} orders)"
        )
        fixed = f"fixed ε={show_spent(f.epsilon_fixed, 4)} ({fixed_rule})"
        first, second = (adaptive, fixed) if f.composition == "adaptive" else (fixed, adaptive)
        out.append(
            (
                check,
                f.composition,
                None,
                True,
                f"enforced: {first}; beside it: {second}",
            )
        )
    return out


__all__ = ["Figures", "Line", "composition_lines", "figures_of"]
