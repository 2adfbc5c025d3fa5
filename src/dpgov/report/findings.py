"""Audit findings: what the audit found wrong, one record each, with a stable ``kind``.

Kinds (docs/audit.md explains each and what to do about it):

ledger integrity
    ``chain_broken``, ``row_corrupted``, ``anchor_mismatch``, ``ledger_truncated``,
    ``anchor_deleted``, ``unanchored_commits``, ``replay_inconsistent``,
    ``projection_mismatch``, ``projection_unreadable``, ``ledger_unsigned``,
    ``signatures_unchecked``, ``ledger_restored``
privacy budget
    ``epsilon_mismatch``, ``block_over_budget``, ``epsilon_uncomputable``
releases
    ``alias_outside_gate``, ``release_without_decision``, ``release_without_approvals``
runs and data
    ``run_without_charges``, ``run_charge_mismatch``, ``charge_without_run``,
    ``run_left_running``, ``data_version_missing``, ``data_version_unknown``,
    ``reservation_pending``
inputs
    ``tracking_unavailable``
the policy in force
    ``policy_not_in_force``, ``policy_change_invalid``
released facts
    ``release_facts_mismatch``, ``release_recalled``
the non-private reference
    ``release_used_reference``
DP-evaluated releases
    ``release_not_dp_evaluated``, ``evaluation_not_charged``
the empirical audit
    ``release_empirical_violation``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = (
    "chain_broken",
    "row_corrupted",
    "anchor_mismatch",
    "ledger_truncated",
    "anchor_deleted",
    "unanchored_commits",
    "replay_inconsistent",
    "projection_mismatch",
    "projection_unreadable",
    "ledger_unsigned",
    "signatures_unchecked",
    "ledger_restored",
    "epsilon_mismatch",
    "block_over_budget",
    "epsilon_uncomputable",
    "alias_outside_gate",
    "release_without_decision",
    "release_without_approvals",
    "run_without_charges",
    "run_charge_mismatch",
    "charge_without_run",
    "run_left_running",
    "data_version_missing",
    "data_version_unknown",
    "reservation_pending",
    "tracking_unavailable",
    # the policy in force (issue 13): dpgov.report.checks.policy_in_force
    "policy_not_in_force",
    "policy_change_invalid",
    # facts bound to the chain and recalls (issue 13): dpgov.report.checks.release_facts
    "release_facts_mismatch",
    "release_recalled",
    # a release judged against the non-private reference that the policy in force forbids
    # (issue 16): dpgov.report.checks.reference
    "release_used_reference",
    # DP-evaluated releases (issue 17): dpgov.report.checks.evaluations
    "release_not_dp_evaluated",
    "evaluation_not_charged",
    # a released version whose newest empirical audit proves its claimed ε wrong
    # (dpgov.gate.empirical; dpgov.report.audit)
    "release_empirical_violation",
)

# Findings about the state as a whole are always reported; those tied to one moment (a run,
# a reservation) are left out of a report restricted with --since when they happened before.
TIMELESS = frozenset(
    {
        "chain_broken",
        "row_corrupted",
        "anchor_mismatch",
        "ledger_truncated",
        "anchor_deleted",
        "unanchored_commits",
        "projection_mismatch",
        "projection_unreadable",
        "ledger_unsigned",
        "signatures_unchecked",
        "block_over_budget",
        "alias_outside_gate",
        "tracking_unavailable",
        "release_empirical_violation",
    }
)


@dataclass(frozen=True)
class Finding:
    """One thing wrong. ``where`` holds what locates it (seq, dataset, block, run_id, ...);
    ``time`` (ISO 8601) is when the thing it is about happened, when known."""

    kind: str
    detail: str
    where: dict[str, Any] = field(default_factory=dict)
    time: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:  # a typo here would silently split a kind in two
            raise ValueError(f"unknown finding kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "detail": self.detail}
        out.update({k: v for k, v in self.where.items() if v is not None})
        if self.time:
            out["time"] = self.time
        return out


def finding(kind: str, detail: str, *, time: str | None = None, **where: Any) -> Finding:
    return Finding(kind, detail, {k: v for k, v in where.items() if v is not None}, time)
