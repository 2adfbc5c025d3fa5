"""The non-private reference in the gate: confined, and said when used (issue 16).

The reference is the same model trained on the same patients without DP. Its model is never
registered nor stored (only its metrics); its subgroup gaps, recorded in the DP candidate's
facts, are what the fairness *widening* checks compare against. ``release.allow_reference:
false`` (``policies/strict.yaml``) trains no reference and turns the widening checks off,
said in the table (:data:`REFERENCE_OFF`). A release whose gate judged widening against the
reference depended on a non-private model: :func:`reference_used` says when, and the privacy
statement and the audit say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from dpgov.gate.facts import CandidateFacts
from dpgov.policy.schema import Policy

REFERENCE_OFF = "off: release.allow_reference is false"
WIDENING = "_gap_widening:"

C = TypeVar("C")


def is_widening(name: str) -> bool:
    return WIDENING in name


def confine_reference(policy: Policy, checks: Iterable[C]) -> list[C]:
    """``checks`` with every widening line turned off when the policy forbids the reference.

    ``checks`` are :class:`dpgov.gate.decision.Check` lines (frozen dataclasses)."""
    out = list(checks)
    if policy.release.allow_reference:
        return out
    return [
        replace(c, observed=None, limit=None, passed=True, reason=REFERENCE_OFF)  # type: ignore[type-var]
        if is_widening(str(getattr(c, "name", "")))
        else c
        for c in out
    ]


def widening_on(policy: Policy) -> bool:
    """Whether a gate under ``policy`` judges anything against a reference: a widening, or
    the AUROC drop (``utility.max_auroc_drop``, :mod:`dpgov.gate.reference_floor`)."""
    f = policy.fairness
    return policy.release.allow_reference and (
        policy.utility.max_auroc_drop is not None
        or (
            bool(f.sensitive_attributes)
            and (f.max_auroc_gap_widening is not None or f.max_fnr_gap_widening is not None)
        )
    )


def reference_used(policy: Policy, facts: CandidateFacts) -> bool:
    """Whether a gate under ``policy`` judges ``facts`` against its non-private reference."""
    return facts.private and facts.reference is not None and widening_on(policy)


def decision_used_reference(checks: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a recorded decision (its ``checks`` as dicts) judged a widening against the
    reference: a widening line with an observed value."""
    return any(
        (is_widening(str(c.get("name", ""))) or c.get("name") == "auroc_drop")
        and c.get("observed") is not None
        for c in checks
    )
