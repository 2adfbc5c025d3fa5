"""The utility floor relative to the non-private reference (``utility.max_auroc_drop``): the
reference's AUROC minus the candidate's, on the same test split, at most the limit. Shown as
off, with the reason, where the policy turns it off, forbids the reference
(``release.allow_reference: false``) or the run trained none (``train.reference: false``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpgov.gate.facts import CandidateFacts
    from dpgov.policy.schema import Policy

# a gate line: name, observed, limit, passed, reason (dpgov.gate.decision.Check's fields)
Line = tuple[str, float | None, float | None, bool, str]


def auroc_drop_check(policy: Policy, facts: CandidateFacts) -> Line:
    """The ``auroc_drop`` line (the decision makes it a Check)."""
    limit = policy.utility.max_auroc_drop
    if limit is None:
        return ("auroc_drop", None, None, True, "off in policy")
    if not policy.release.allow_reference:
        return (
            "auroc_drop",
            None,
            None,
            True,
            "off: the policy allows no non-private reference (release.allow_reference: false)",
        )
    if facts.reference is None:
        return (
            "auroc_drop",
            None,
            None,
            True,
            "off: no non-private reference was trained for this run",
        )
    drop = facts.reference.auroc - facts.auroc
    ok = drop <= limit
    return (
        "auroc_drop",
        drop,
        limit,
        ok,
        f"AUROC {facts.auroc:.4f} vs the reference's {facts.reference.auroc:.4f}: a drop of "
        f"{drop:+.4f}, {'within' if ok else 'over'} {limit:g}",
    )
