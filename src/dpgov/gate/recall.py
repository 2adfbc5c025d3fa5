"""Recall: a release that a later audit or finding invalidates.

:func:`recall` records a ``recall`` entry (:func:`dpgov.ledger.releases.record_recall`: the
version, the alias, why, and the authenticated identity that recalls), marks the version's
privacy statement void (tags ``dpgov.statement: void`` and ``dpgov.recall``), then moves the
release alias away when it points at the version: back to the newest earlier promoted version
that still passes the gate now (a promotion like any other: gate decision and ``promotion``
entry, so the audit sees an ordinary alias change), else the alias is deleted (an
``alias_deleted`` entry, written before it goes). A recalled
version never passes the gate again (its ``recall`` check fails), so promotion refuses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpgov.contracts import TAG_PREFIX
from dpgov.errors import Refused, UsageError
from dpgov.gate.candidate import parse_version
from dpgov.gate.promotion import check_alias, promote, promotions
from dpgov.identity import Identity, acting_identity
from dpgov.ledger.releases import recalled, record_recall

if TYPE_CHECKING:
    from dpgov.gate.ports import RegistryPort
    from dpgov.ledger import Entry, Ledger
    from dpgov.policy import LoadedPolicy

TAG_STATEMENT = f"{TAG_PREFIX}statement"
TAG_RECALL = f"{TAG_PREFIX}recall"
STATEMENT_VOID = "void"
ALIAS_DELETED = "alias_deleted"  # a recall left no earlier release: the alias was removed


@dataclass(frozen=True)
class RecallResult:
    model: str
    version: str
    alias: str
    moved_to: str | None  # the version the alias now points at (None: deleted or untouched)
    alias_moved: bool
    entry: Entry
    restored_promotion: Entry | None
    identity: Identity

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "alias_moved": self.alias_moved,
            "moved_to": self.moved_to,
            "recall_seq": self.entry.seq,
            "promotion_seq": self.restored_promotion.seq if self.restored_promotion else None,
            "statement": STATEMENT_VOID,
            **self.identity.to_dict(),
        }


def _earlier_releases(ledger: Ledger, model: str, alias: str, version: str) -> list[str]:
    """Versions promoted to ``alias`` before, newest first, neither this one nor recalled."""
    seen: list[str] = []
    for e in reversed(promotions(ledger, model, alias)):
        v = str(e.payload.get("version"))
        if v != version and v not in seen and recalled(ledger, model, v) is None:
            seen.append(v)
    return seen


def recall(
    *,
    model: str,
    version: str,
    reason: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
    alias: str | None = None,
    who: Identity | None = None,
) -> RecallResult:
    """Recall ``version`` (see the module). UsageError (exit 2, nothing recorded) for an
    unknown version, an empty reason, or a version already recalled."""
    version = parse_version(version)
    alias = check_alias(alias if alias is not None else policy.policy.release.alias)
    registry.model_version(model, version)  # unknown model or version: UsageError
    if not reason.strip():
        raise UsageError("--reason: a recall needs a reason; nothing recorded")
    who = who or acting_identity(ledger)
    current = registry.alias_version(model, alias)
    holds = current == version
    earlier = _earlier_releases(ledger, model, alias, version) if holds else []
    entry = record_recall(
        ledger,
        model=model,
        version=version,
        alias=alias,
        moved_to=None,
        reason=reason,
        identity=who.to_dict(),
        actor=who.name,
    )
    registry.set_tags(
        model,
        version,
        {
            TAG_STATEMENT: STATEMENT_VOID,
            TAG_RECALL: json.dumps(
                {"seq": entry.seq, "time": entry.time, "by": who.name, "reason": reason[:2000]},
                ensure_ascii=False,
            ),
        },
    )
    restored, moved_to = None, None
    if holds:
        for v in earlier:
            try:
                result = promote(
                    model=model,
                    version=v,
                    policy=policy,
                    ledger=ledger,
                    registry=registry,
                    alias=alias,
                )
            except Refused:
                continue  # blocked now: try the one before
            restored, moved_to = result.entry, v
            break
        if moved_to is None:  # recorded before the alias goes (as a promotion is)
            ledger.append(
                kind=ALIAS_DELETED,
                payload={"model": model, "alias": alias, "version": version, "recall": entry.seq},
                actor=who.name,
            )
            registry.delete_alias(model, alias)
    return RecallResult(model, version, alias, moved_to, holds, entry, restored, who)
