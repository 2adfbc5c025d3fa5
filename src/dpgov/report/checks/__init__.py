"""The audit's checks, one module each; every check is a pure function of what was read.

====================  ==========================================================================
:mod:`.chain`         the hash chain over the rows as stored (and their HMAC signatures)
:mod:`.anchors`       the entry at each anchored seq still has the anchored hash; no truncation
:mod:`.projection`    the ledger's tables (blocks, reservations, charges) against the entries
:mod:`.budgets`       every block's ε from scratch against the ledger, the recorded figures and
                      the policy's limit
:mod:`.releases`      aliases against promotions, promotions against decisions and approvals
:mod:`.runs`          DP runs in MLflow against their charges, charges against MLflow
:mod:`.run_figures`   the ε figures runs logged against the ledger (and the composition budget)
:mod:`.data_versions` every charge's data version against DVC
:mod:`.pending`       reservations left pending; aborted ones listed
:mod:`.policies`      the policies in force, by hash
:mod:`.reference`     releases whose gate used the non-private reference (listed; a finding
                      when the policy in force forbids the reference)
====================  ==========================================================================

:func:`dpgov.report.audit.audit` runs them all and assembles the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def count_by(items: Iterable[str]) -> dict[str, int]:
    """How many of each, by name, in name order."""
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items()))


def short_hash(h: str | None) -> str:
    """The first 12 hex digits of a hash, for a sentence."""
    return (h or "")[:12] + "…" if h else "—"


def fmt_epsilon(x: float) -> str:
    """An ε in a finding's sentence (4 decimals; ∞ for infinity)."""
    return "∞" if math.isinf(x) else f"{x:.4f}"
