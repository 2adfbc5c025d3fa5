"""Which approvals and refusals of a model version stand (pure), and reading them back.

Every approval and refusal is a ledger entry (kinds ``approval`` and ``refusal``); recording
them is :mod:`dpgov.gate.approvals`. Which actions stand (:func:`standing`):

* Approvers are compared by :func:`dpgov.policy.approver_key` (case and spacing ignored), so the
  same approver twice counts once.
* Each approver's **latest** action on a version stands. A refusal therefore blocks promotion of
  that version until the same approver later approves it (changing their mind is recorded, never
  erased); approvals by others do not override it. A new model version starts with no approvals
  and no refusals.
* Only approvers allowed by the policy in force *at evaluation* count, for approvals and
  refusals alike; the run's author's approval counts only with ``approvals.allow_author``.
  The author may always refuse their own model (refusing is never self-serving).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dpgov.policy.schema import Approvals, approver_key

if TYPE_CHECKING:
    from dpgov.ledger import Entry, Ledger

KINDS = ("approval", "refusal")


@dataclass(frozen=True)
class ApprovalRecord:
    """One approval or refusal of a model version, as read from the ledger."""

    kind: Literal["approval", "refusal"]
    by: str
    text: str  # the note of an approval, the reason of a refusal
    time: str = ""
    seq: int = 0
    actor: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "by": self.by,
            "text": self.text,
            "time": self.time,
            "seq": self.seq,
            "actor": self.actor,
        }


@dataclass(frozen=True)
class Standing:
    approvals: tuple[ApprovalRecord, ...]  # counted towards approvals.required
    refusals: tuple[ApprovalRecord, ...]  # block promotion
    ignored: tuple[tuple[ApprovalRecord, str], ...]  # standing but not counted, and why


def standing(records: Iterable[ApprovalRecord], policy: Approvals, *, author: str) -> Standing:
    """Which approvals count and which refusals stand (latest action of each approver)."""
    latest: dict[str, ApprovalRecord] = {}
    for r in sorted(records, key=lambda r: r.seq):
        latest[approver_key(r.by)] = r
    approvals: list[ApprovalRecord] = []
    refusals: list[ApprovalRecord] = []
    ignored: list[tuple[ApprovalRecord, str]] = []
    author_key = approver_key(author)
    for key, r in latest.items():
        if not policy.may_approve(r.by):
            ignored.append((r, "not an approver under this policy"))
        elif r.kind == "refusal":
            refusals.append(r)
        elif key == author_key and not policy.allow_author:
            ignored.append((r, "author of the run"))
        else:
            approvals.append(r)
    return Standing(tuple(approvals), tuple(refusals), tuple(ignored))


def records_from_entries(
    entries: Iterable[Entry], model: str, version: str
) -> list[ApprovalRecord]:
    """The approvals and refusals of one model version among ledger entries."""
    out = []
    for e in entries:
        p = e.payload
        if e.kind not in KINDS or p.get("model") != model or str(p.get("version")) != version:
            continue
        text = p.get("note") if e.kind == "approval" else p.get("reason")
        out.append(
            ApprovalRecord(
                kind="approval" if e.kind == "approval" else "refusal",
                by=str(p.get("by", "")),
                text=str(text or ""),
                time=e.time,
                seq=e.seq,
                actor=e.actor,
            )
        )
    return sorted(out, key=lambda r: r.seq)


def read_records(ledger: Ledger, model: str, version: str) -> list[ApprovalRecord]:
    entries = [e for kind in KINDS for e in ledger.entries(kind=kind)]
    return records_from_entries(entries, model, version)


def summarize(records: Sequence[ApprovalRecord], policy: Approvals, author: str) -> dict[str, Any]:
    s = standing(records, policy, author=author)
    return {
        "required": policy.required,
        "approvals": [r.to_dict() for r in s.approvals],
        "refusals": [r.to_dict() for r in s.refusals],
        "ignored": [{**r.to_dict(), "why": why} for r, why in s.ignored],
        "complete": len(s.approvals) >= policy.required and not s.refusals,
    }
