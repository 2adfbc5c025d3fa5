"""Approvals and refusals of a model version.

Every approval and refusal is a ledger entry (kinds ``approval`` and ``refusal``) and is mirrored
as tags on the model version; the ledger is the record, tags are for people browsing MLflow.

Which actions stand is :mod:`dpgov.gate.standing` (pure).

Who acts is the identity the deployment authenticates (:func:`dpgov.identity.acting_identity`),
recorded with the entry (``identity``, ``authenticated_by``) and as the entry's actor. ``--by``
names the approver as the policy lists them; it must be that identity, or be mapped to it in
``approvals.identities``. Recording (:func:`record_approval`, :func:`record_refusal`) checks
first, then writes: ``--by`` naming someone other than who acts, an approver outside
``approvals.approvers``, a service identity, a self-approval the policy forbids, an approver
whose key is listed acting without a valid signature, a version with no facts bound in the
ledger, or the non-private reference raise :class:`UsageError` (exit 2) before anything is
recorded.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from dpgov import names
from dpgov.contracts import TAG_APPROVALS, TAG_PREFIX, TAG_REFUSALS
from dpgov.errors import UsageError
from dpgov.gate.bound import policy_setter
from dpgov.gate.candidate import fit, load_candidate, parse_version
from dpgov.gate.signatures import approval_message, verify
from dpgov.gate.standing import ApprovalRecord, excluded_identities, read_records, standing
from dpgov.identity import Identity, acting_identity
from dpgov.ledger.releases import Binding, binding_of

if TYPE_CHECKING:
    from dpgov.gate.facts import CandidateFacts
    from dpgov.gate.ports import RegistryPort
    from dpgov.ledger import Entry, Ledger
    from dpgov.policy import LoadedPolicy

MAX_TEXT = 2000  # characters of a note or reason kept (the ledger keeps them whole)


# ---------------------------------------------------------------------------------- recording


def display_name(by: str | None, policy: LoadedPolicy, who: Identity) -> str:
    """The approver name recorded: ``--by`` (an identity name, as typed) or, without it, the
    approver the policy maps to who acts (else the identity itself)."""
    if by is not None:
        return names.identity(by, argument="--by")
    rules = policy.policy.approvals
    mapped = [name for name, ident in rules.identities.items() if ident == who.name]
    return mapped[0] if len(mapped) == 1 else who.name


def check_approver(
    kind: Literal["approval", "refusal"],
    by: str | None,
    policy: LoadedPolicy,
    facts: CandidateFacts,
    *,
    who: Identity,
    binding: Binding | None,
    setter: str | None = None,
) -> str:
    """Validate who acts; return the approver name as recorded. Raises UsageError, records
    nothing.

    The name must be an identity name as typed (:func:`dpgov.names.identity`: lowercase
    ``[a-z0-9._@-]``, unchanged by NFKC and case folding), so ``root`` followed by a
    zero-width space, ``ROOT`` or a full-width ``ｒｏｏｔ`` can never count as another approver;
    and it must name who acts (``approvals.identities`` maps a name to an identity).
    """
    name = display_name(by, policy, who)
    rules = policy.policy.approvals
    if rules.identity_of(name) != who.name:
        mapped = rules.identities.get(name)
        detail = f"the policy maps {name!r} to {mapped!r}" if mapped else "the policy maps nobody"
        raise UsageError(
            f"--by {name!r} is not who acts: the deployment authenticates {who.name!r} "
            f"({who.method}), and {detail} to it; nothing recorded"
        )
    if not rules.may_approve(name):
        allowed = ", ".join(rules.approvers or [])
        raise UsageError(
            f"--by {name!r} is not an approver under policy {policy.path} "
            f"(approvals.approvers: {allowed}); nothing recorded"
        )
    if binding is None:
        raise UsageError(
            f"model {facts.model_name} version {facts.model_version} has no facts bound in the "
            f"ledger (not registered by dpgov tracking): the gate blocks it; nothing recorded"
        )
    if not facts.private or not binding.private:
        raise UsageError(
            f"model {facts.model_name} version {facts.model_version} is the non-private "
            f"reference: it is never promotable, so it takes no {kind}; nothing recorded"
        )
    author = binding.author
    barred = excluded_identities(policy.policy, author=author, setter=setter)
    if who.name in barred and (kind == "approval" or who.name != author):
        raise UsageError(
            f"{who.name!r} is {barred[who.name]}: it takes no {kind}; nothing recorded"
        )
    if kind == "approval" and who.name == author and not rules.allow_author:
        raise UsageError(
            f"--by {name!r} ({who.name}) is the author of run {facts.run_id}, and policy "
            f"{policy.path} forbids self-approval (approvals.allow_author: false); nothing recorded"
        )
    return name


def message_for(kind: str, model: str, version: str, binding: Binding) -> bytes:
    """The canonical message an approver signs (:func:`dpgov.gate.signatures.approval_message`)."""
    return approval_message(
        decision=kind,
        model=model,
        version=version,
        run_id=binding.run_id,
        reservation=binding.reservation,
        facts_sha256=binding.facts_sha256,
    )


def _check_signature(
    kind: str,
    name: str,
    signature: str | None,
    policy: LoadedPolicy,
    message: bytes,
    *,
    by_signature: bool = False,
) -> None:
    key = policy.policy.approvals.ssh_keys.get(name)
    if key is None:
        if by_signature:
            raise UsageError(
                f"{name!r} has no key in approvals.ssh_keys: an answer recorded on their behalf "
                f"counts only signed with it; run `dpgov approve` as {name!r}; nothing recorded"
            )
        if signature:
            raise UsageError(
                f"a signature was given, but approvals.ssh_keys lists no key for {name!r}; "
                "nothing recorded"
            )
        return
    if not signature:
        raise UsageError(
            f"approver {name!r} has a key in approvals.ssh_keys: the {kind} counts only signed "
            "(--sign KEYFILE or --signature FILE); nothing recorded"
        )
    if not verify(message, signature, principal=name, public_key=key):
        raise UsageError(
            f"the signature does not verify with {name!r}'s key in approvals.ssh_keys (over "
            f"this {kind} of this version's bound facts); nothing recorded"
        )


def _record(
    kind: Literal["approval", "refusal"],
    *,
    model: str,
    version: str,
    by: str | None,
    text: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
    signature: str | None = None,
    who: Identity | None = None,
) -> tuple[Entry, list[ApprovalRecord]]:
    version = parse_version(version)
    facts, _ = load_candidate(registry, model, version)
    if who is not None and who.method != "ssh-signature":
        raise UsageError(  # who acts is established here, never handed in
            "only an identity authenticated by its signature may be given; nothing recorded"
        )
    who = who or acting_identity(ledger)
    binding = binding_of(ledger, model, version)
    setter = policy_setter(ledger, facts.dataset)
    name = check_approver(kind, by, policy, facts, who=who, binding=binding, setter=setter)
    assert binding is not None
    _check_signature(
        kind,
        name,
        signature,
        policy,
        message_for(kind, model, version, binding),
        by_signature=who.method == "ssh-signature",
    )
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
            "run_id": binding.run_id,
            "reservation": binding.reservation,
            "facts_sha256": binding.facts_sha256,
            "author": binding.author,
            "policy_sha256": policy.sha256,
            **who.to_dict(),
            **({"signature": signature} if signature else {}),
        },
        actor=who.name,
    )
    records = read_records(ledger, model, version)
    barred = excluded_identities(policy.policy, author=binding.author, setter=setter)
    s = standing(records, policy.policy.approvals, author=binding.author, excluded=barred)
    registry.set_tags(
        model,
        version,
        {
            f"{TAG_PREFIX}{kind}.{entry.seq}": json.dumps(
                {
                    "by": name,
                    "identity": who.name,
                    field: text[:MAX_TEXT],
                    "time": entry.time,
                    "seq": entry.seq,
                    "signed": bool(signature),
                },
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
    by: str | None,
    note: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
    signature: str | None = None,
    who: Identity | None = None,
) -> tuple[Entry, list[ApprovalRecord]]:
    """Record an approval (ledger entry kind ``approval`` and tags); checks come first.

    Who acts is :func:`dpgov.identity.acting_identity`; ``who`` is only for an approver
    authenticated by signature (``ssh-signature``: the approval flow's worker records it), whose
    signature must then verify with their key in ``approvals.ssh_keys``."""
    return _record(
        "approval",
        model=model,
        version=version,
        by=by,
        text=note,
        policy=policy,
        ledger=ledger,
        registry=registry,
        signature=signature,
        who=who,
    )


def record_refusal(
    *,
    model: str,
    version: str,
    by: str | None,
    reason: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
    signature: str | None = None,
    who: Identity | None = None,
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
        signature=signature,
        who=who,
    )
