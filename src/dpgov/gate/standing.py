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
* Who acted is the **authenticated identity** on record (:mod:`dpgov.identity`), never the
  typed name: an action counts only when its identity is the one the policy names for the
  approver (``approvals.identities``, else the name itself); actions are keyed by identity, and
  the author rule compares identities. An action with no identity on record does not count.
* An approver with a key in ``approvals.ssh_keys`` approves only with a verified signature.
* Identities in ``governance.service_identities`` never count, and with
  ``governance.separate_duties`` neither do the policy setter's nor the author's (even with
  ``allow_author``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dpgov.policy.schema import Approvals, Policy, approver_key

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
    identity: str = ""  # the authenticated identity that acted ("" on entries before issue 13)
    authenticated_by: str = ""
    signature: str = ""  # the SSH signature recorded with the action, if any
    signed: bool | None = None  # verified against the policy's key: True, False; None: not

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "by": self.by,
            "text": self.text,
            "time": self.time,
            "seq": self.seq,
            "actor": self.actor,
            "identity": self.identity,
            "authenticated_by": self.authenticated_by,
            "signed": self.signed,
        }


@dataclass(frozen=True)
class Standing:
    approvals: tuple[ApprovalRecord, ...]  # counted towards approvals.required
    refusals: tuple[ApprovalRecord, ...]  # block promotion
    ignored: tuple[tuple[ApprovalRecord, str], ...]  # standing but not counted, and why


def standing(
    records: Iterable[ApprovalRecord],
    policy: Approvals,
    *,
    author: str,
    excluded: Mapping[str, str] | None = None,
) -> Standing:
    """Which approvals count and which refusals stand (latest action of each identity).

    ``excluded``: identities whose actions never count, and why (service identities; with
    separate duties the policy setter and the author)."""
    latest: dict[str, ApprovalRecord] = {}
    for r in sorted(records, key=lambda r: r.seq):
        latest[r.identity or f"(unauthenticated) {approver_key(r.by)}"] = r
    approvals: list[ApprovalRecord] = []
    refusals: list[ApprovalRecord] = []
    ignored: list[tuple[ApprovalRecord, str]] = []
    barred = dict(excluded or {})
    for ident, r in latest.items():
        why = _not_counted(r, policy, barred)
        if why is not None:
            ignored.append((r, why))
        elif r.kind == "refusal":
            refusals.append(r)
        elif ident == author and not policy.allow_author:
            ignored.append((r, "author of the run"))
        elif r.by in policy.ssh_keys and r.signed is not True:
            ignored.append((r, "not signed with the approver's key in approvals.ssh_keys"))
        else:
            approvals.append(r)
    return Standing(tuple(approvals), tuple(refusals), tuple(ignored))


def excluded_identities(policy: Policy, *, author: str, setter: str | None) -> dict[str, str]:
    """Identities whose approvals and refusals never count under ``policy``, and why."""
    gov = policy.governance
    out = {i: "a service identity (governance.service_identities)" for i in gov.service_identities}
    if gov.separate_duties:
        if setter:
            out.setdefault(setter, "set the policy in force (governance.separate_duties)")
        out.setdefault(author, "author of the run (governance.separate_duties)")
    return out


def _not_counted(r: ApprovalRecord, policy: Approvals, barred: Mapping[str, str]) -> str | None:
    if not r.identity:
        return "no authenticated identity on record"
    if not policy.may_approve(r.by):
        return "not an approver under this policy"
    if policy.identity_of(r.by) != r.identity:
        return f"acted as {r.identity!r}, not the identity {policy.identity_of(r.by)!r} of {r.by!r}"
    if r.identity in barred:
        return barred[r.identity]
    return None


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
                identity=str(p.get("identity") or ""),
                authenticated_by=str(p.get("authenticated_by") or ""),
                signature=str(p.get("signature") or ""),
            )
        )
    return sorted(out, key=lambda r: r.seq)


def read_records(ledger: Ledger, model: str, version: str) -> list[ApprovalRecord]:
    entries = [e for kind in KINDS for e in ledger.entries(kind=kind)]
    return records_from_entries(entries, model, version)


def summarize(
    records: Sequence[ApprovalRecord],
    policy: Approvals,
    author: str,
    excluded: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    s = standing(records, policy, author=author, excluded=excluded)
    return {
        "required": policy.required,
        "approvals": [r.to_dict() for r in s.approvals],
        "refusals": [r.to_dict() for r in s.refusals],
        "ignored": [{**r.to_dict(), "why": why} for r, why in s.ignored],
        "complete": len(s.approvals) >= policy.required and not s.refusals,
    }
