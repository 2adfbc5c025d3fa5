"""Approvals and refusals of a model version.

Every approval and refusal is a ledger entry (kinds ``approval`` and ``refusal``) and is mirrored
as tags on the model version; the ledger is the record, tags are for people browsing MLflow.

Which actions stand is :mod:`dpgov.gate.standing` (pure).

Recording (:func:`record_approval`, :func:`record_refusal`) checks first, then writes: an
approver outside ``approvals.approvers``, a self-approval the policy forbids, or the non-private
reference raise :class:`UsageError` (exit 2) before anything is recorded.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from dpgov import names
from dpgov.contracts import TAG_APPROVALS, TAG_PREFIX, TAG_REFUSALS
from dpgov.errors import UsageError
from dpgov.gate.candidate import fit, load_candidate, parse_version
from dpgov.gate.standing import ApprovalRecord, read_records, standing
from dpgov.policy.schema import approver_key

if TYPE_CHECKING:
    from dpgov.gate.facts import CandidateFacts
    from dpgov.gate.ports import RegistryPort
    from dpgov.ledger import Entry, Ledger
    from dpgov.policy import LoadedPolicy

MAX_TEXT = 2000  # characters of a note or reason kept (the ledger keeps them whole)


# ---------------------------------------------------------------------------------- recording


def check_approver(
    kind: Literal["approval", "refusal"], by: str, policy: LoadedPolicy, facts: CandidateFacts
) -> str:
    """Validate who acts; return the name as recorded. Raises UsageError, records nothing.

    The name must be an identity name as typed (:func:`dpgov.names.identity`: lowercase
    ``[a-z0-9._@-]``, unchanged by NFKC and case folding), so ``root`` followed by a
    zero-width space, ``ROOT`` or a full-width ``ｒｏｏｔ`` can never count as another approver.
    """
    name = names.identity(by, argument="--by")
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
            f"{TAG_PREFIX}{kind}.{entry.seq}": json.dumps(
                {"by": name, field: text[:MAX_TEXT], "time": entry.time, "seq": entry.seq},
                ensure_ascii=False,
            ),
            TAG_APPROVALS: fit(", ".join(r.by for r in s.approvals)),
            TAG_REFUSALS: fit(", ".join(r.by for r in s.refusals)),
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
