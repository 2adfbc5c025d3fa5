"""Ledger facts with both composition figures per block (issue 16): what
:func:`dpgov.gate.service.collect_ledger_facts` hands the pure gate, read by
:func:`dpgov.gate.composition.composition_lines`."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpgov.gate.composition import Figures
from dpgov.gate.decision import LedgerFacts


@dataclass(frozen=True)
class LedgerFactsWithFigures(LedgerFacts):
    """:class:`LedgerFacts` and, by block name, both figures and the rule enforced."""

    figures: dict[str, Figures] = field(default_factory=dict)


__all__ = ["LedgerFactsWithFigures"]
