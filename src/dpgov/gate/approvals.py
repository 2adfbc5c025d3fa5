"""Approvals and refusals of a model version.

Every approval and refusal is a ledger entry (kinds ``approval`` and ``refusal``) and is mirrored
as tags on the model version; the ledger is the record, tags are for people browsing MLflow.

Which actions stand (:func:`standing`, pure):

* Approvers are compared by :func:`dpgov.policy.approver_key` (case and spacing ignored), so the
  same approver twice counts once.
* Each approver's **latest** action on a version stands. A refusal therefore blocks promotion of
  that version until the same approver later approves it (changing their mind is recorded, never
  erased); approvals by others do not override it. A new model version starts with no approvals
  and no refusals.
* Only approvers allowed by the policy in force *at evaluation* count, for approvals and
  refusals alike; the run's author's approval counts only with ``approvals.allow_author``.
  The author may always refuse their own model (refusing is never self-serving).

Recording (:func:`record_approval`, :func:`record_refusal`) checks first, then writes: an
approver outside ``approvals.approvers``, a self-approval the policy forbids, or the non-private
reference raise :class:`UsageError` (exit 2) before anything is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dpgov.errors import UsageError
from dpgov.policy.schema import Approvals, approver_key

if TYPE_CHECKING:
    from dpgov.gate.facts import CandidateFacts
    from dpgov.gate.ports import RegistryPort
    from dpgov.ledger import Entry, Ledger
    from dpgov.policy import LoadedPolicy

KINDS = ("approval", "refusal")
MAX_TEXT = 2000  # characters of a note or reason kept (the ledger keeps them whole)


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


# ---------------------------------------------------------------------------------- recording


def check_approver(
    kind: Literal["approval", "refusal"], by: str, policy: LoadedPolicy, facts: CandidateFacts
) -> str:
    """Validate who acts; return the name as recorded. Raises UsageError, records nothing."""
    name = " ".join(by.split())
    if not name:
        raise UsageError("--by: approver name is empty")
    if len(name) > 128:
        raise UsageError(f"--by: approver name is {len(name)} characters, the limit is 128")
    rules = policy.policy.approvals
    if not rules.may_approve(name):
        allowed = ", ".join(rules.approvers or [])
        raise UsageError(
            f"--by {name!r} is not an approver under policy {policy.path} "
            f"(approvals.approvers: {allowed}); nothing recorded"
        )
    if not facts.private:
        raise UsageError(
            f"model {facts.model_name} version {facts.model_version} is the non-private "
            f"reference: it is never promotable, so it takes no {kind}; nothing recorded"
        )
    if (
        kind == "approval"
        and approver_key(name) == approver_key(facts.author)
        and not rules.allow_author
    ):
        raise UsageError(
            f"--by {name!r} is the author of run {facts.run_id}, and policy {policy.path} "
            f"forbids self-approval (approvals.allow_author: false); nothing recorded"
        )
    return name


def _record(
    kind: Literal["approval", "refusal"],
    *,
    model: str,
    version: str,
    by: str,
    text: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
) -> tuple[Entry, list[ApprovalRecord]]:
    from dpgov.gate.service import fit as _fit
    from dpgov.gate.service import load_candidate, parse_version

    version = parse_version(version)
    facts, _ = load_candidate(registry, model, version)
    name = check_approver(kind, by, policy, facts)
    text = text.strip()
    if kind == "refusal" and not text:
        raise UsageError("--reason: a refusal needs a reason; nothing recorded")
    field = "note" if kind == "approval" else "reason"
    entry = ledger.append(
        kind=kind,
        payload={
            "model": model,
            "version": version,
            "by": name,
            field: text,
            "run_id": facts.run_id,
            "author": facts.author,
            "policy_sha256": policy.sha256,
        },
    )
    records = read_records(ledger, model, version)
    s = standing(records, policy.policy.approvals, author=facts.author)
    registry.set_tags(
        model,
        version,
        {
            f"dpgov.{kind}.{entry.seq}": json.dumps(
                {"by": name, field: text[:MAX_TEXT], "time": entry.time, "seq": entry.seq},
                ensure_ascii=False,
            ),
            "dpgov.approvals": _fit(", ".join(r.by for r in s.approvals)),
            "dpgov.refusals": _fit(", ".join(r.by for r in s.refusals)),
        },
    )
    return entry, records


def record_approval(
    *,
    model: str,
    version: str,
    by: str,
    note: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
) -> tuple[Entry, list[ApprovalRecord]]:
    """Record an approval (ledger entry kind ``approval`` and tags); checks come first."""
    return _record(
        "approval",
        model=model,
        version=version,
        by=by,
        text=note,
        policy=policy,
        ledger=ledger,
        registry=registry,
    )


def record_refusal(
    *,
    model: str,
    version: str,
    by: str,
    reason: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
) -> tuple[Entry, list[ApprovalRecord]]:
    """Record a refusal (ledger entry kind ``refusal`` and tags); checks come first."""
    return _record(
        "refusal",
        model=model,
        version=version,
        by=by,
        text=reason,
        policy=policy,
        ledger=ledger,
        registry=registry,
    )


def summarize(records: Sequence[ApprovalRecord], policy: Approvals, author: str) -> dict[str, Any]:
    s = standing(records, policy, author=author)
    return {
        "required": policy.required,
        "approvals": [r.to_dict() for r in s.approvals],
        "refusals": [r.to_dict() for r in s.refusals],
        "ignored": [{**r.to_dict(), "why": why} for r, why in s.ignored],
        "complete": len(s.approvals) >= policy.required and not s.refusals,
    }
