"""Promotion: the only path that moves a release alias in the registry.

:func:`promote` re-evaluates the gate at that moment (policy, ledger, approvals as they are now),
records the decision, and only when every check passes records a ``promotion`` ledger entry
naming the version the alias pointed at before (``replaced``), then moves the alias. Promoting an
older version (a rollback) goes through exactly the same gate.

Order of writes: the promotion entry is appended before the alias moves, so the ledger never
misses a move; if moving the alias then fails, a ``promotion_failed`` entry names the promotion
that did not take effect. The audit compares the alias with the newest promotion entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpgov.contracts import TAG_PROMOTION, TAG_REPLACED_BY
from dpgov.errors import Refused, UsageError
from dpgov.gate.candidate import parse_version
from dpgov.gate.decision import Decision
from dpgov.gate.service import GateResult, run_gate
from dpgov.identity import acting_identity
from dpgov.policy.schema import alias_problem

if TYPE_CHECKING:
    from dpgov.gate.ports import RegistryPort
    from dpgov.ledger import Entry, Ledger
    from dpgov.policy import LoadedPolicy


class PromotionBlocked(Refused):
    """The gate did not pass: nothing moved. Exit code 1; the message lists every failing check."""

    def __init__(self, decision: Decision, alias: str) -> None:
        self.decision = decision
        self.alias = alias
        lines = "; ".join(f"{c.name}: {c.reason}" for c in decision.failing)
        super().__init__(
            f"promotion of {decision.model} version {decision.version} to @{alias} blocked by "
            f"{len(decision.failing)} failing check(s): {lines}"
        )


@dataclass(frozen=True)
class PromotionResult:
    model: str
    version: str
    alias: str
    replaced: str | None  # the version the alias pointed at before, if any
    promoted: bool  # False when the alias already pointed at this version
    gate: GateResult
    entry: Entry | None  # the promotion ledger entry

    @property
    def rollback(self) -> bool:
        return self.replaced is not None and int(self.version) < int(self.replaced)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "replaced": self.replaced,
            "promoted": self.promoted,
            "rollback": self.rollback,
            "promotion_seq": self.entry.seq if self.entry else None,
            "decision_seq": self.gate.entry.seq if self.gate.entry else None,
            "decision": self.gate.decision.to_dict(),
        }


def check_alias(alias: str) -> str:
    problem = alias_problem(alias)
    if problem:
        raise UsageError(f"--alias {alias!r}: {problem}")
    return alias


def promote(
    *,
    model: str,
    version: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
    alias: str | None = None,
) -> PromotionResult:
    """Re-check the gate now; move ``alias`` (default ``release.alias``) only if it passes.

    Raises :class:`PromotionBlocked` (exit 1) when any check fails, after recording the decision;
    :class:`UsageError` (exit 2, nothing recorded) for an unknown model or version or a bad alias.
    """
    version = parse_version(version)
    alias = check_alias(alias if alias is not None else policy.policy.release.alias)
    gate = run_gate(model, version, policy, ledger, registry, purpose=f"promotion to @{alias}")
    decision = gate.decision
    if not decision.allowed:
        raise PromotionBlocked(decision, alias)
    current = registry.alias_version(model, alias)
    if current == version:
        return PromotionResult(model, version, alias, current, False, gate, None)
    who = acting_identity(ledger)
    entry = ledger.append(
        kind="promotion",
        payload={
            "model": model,
            "version": version,
            "alias": alias,
            "replaced": current,
            "rollback": current is not None and int(version) < int(current),
            "decision_seq": gate.entry.seq if gate.entry else None,
            "policy_sha256": policy.sha256,
            "run_id": gate.inputs.facts.run_id,
            "approvers": list(decision.approvers),
            **who.to_dict(),
        },
        actor=who.name,
    )
    try:
        registry.set_alias(model, alias, version)
    except Exception as err:
        ledger.append(
            kind="promotion_failed",
            payload={
                "model": model,
                "version": version,
                "alias": alias,
                "promotion_seq": entry.seq,
                "error": f"{type(err).__name__}: {err}"[:500],
            },
        )
        raise
    registry.set_tags(
        model,
        version,
        {
            TAG_PROMOTION: json.dumps(
                {"alias": alias, "seq": entry.seq, "time": entry.time, "replaced": current}
            ),
        },
    )
    if current is not None:
        registry.set_tags(
            model,
            current,
            {
                TAG_REPLACED_BY: json.dumps(
                    {"alias": alias, "version": version, "seq": entry.seq, "time": entry.time}
                ),
            },
        )
    return PromotionResult(model, version, alias, current, True, gate, entry)


def promotions(ledger: Ledger, model: str | None = None, alias: str | None = None) -> list[Entry]:
    """Promotion entries, oldest first (of one model and alias when named)."""
    failed = {e.payload.get("promotion_seq") for e in ledger.entries(kind="promotion_failed")}
    return [
        e
        for e in ledger.entries(kind="promotion")
        if e.seq not in failed
        and (model is None or e.payload.get("model") == model)
        and (alias is None or e.payload.get("alias") == alias)
    ]


def released_version(ledger: Ledger, model: str, alias: str) -> str | None:
    """The version the ledger says ``alias`` points at (None when never promoted). The audit
    compares it with the registry: any difference means something else moved the alias."""
    history = promotions(ledger, model, alias)
    if not history:
        return None
    last = history[-1]
    deleted = [  # a recall that left no earlier release removed the alias (dpgov.gate.recall)
        e
        for e in ledger.entries(kind="alias_deleted", since_seq=last.seq)
        if e.payload.get("model") == model and e.payload.get("alias") == alias
    ]
    return None if deleted else str(last.payload["version"])
