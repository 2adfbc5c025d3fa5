"""The policy in force is ledger state: ``policy_set`` entries, and what they mean.

Every change of policy is one chained ``policy_set`` entry (written only here, under the
ledger's write lock), with an ``action``:

- ``set``: the policy (its YAML text, the canonical JSON of what it parses to, and the SHA-256
  of the text's bytes) is in force from this entry on, for one dataset or for the whole
  ledger (``dataset``: null);
- ``propose``: the same content, not yet in force, because it raises a limit
  (``budget.epsilon_per_block``, ``budget.delta``, the release's ε or δ, or changes the
  accountant) over blocks that already have charges. It takes effect at the ``approve`` entry
  that brings it ``approvals.required`` distinct approvers of the policy in force when it was
  proposed (its ``approvals.approvers``, never the proposer nor a
  ``governance.service_identities`` identity);
- ``approve``: one approver's approval of a proposal (``proposal``: its entry's seq).

A proposal lapses when any other policy takes effect first (its approvals then count for
nothing). Who may ``set`` or ``propose``: anyone on a ledger no policy was ever set on; after
that, the ``governance.policy_setters`` of the policy in force for that scope, or, when it
names none, the identity that made the ledger's first set.

:func:`history` decides all of this from the entries alone (the verified state's, their
hashes checked), so the command that writes an entry and everything that reads the policy in
force (enforcement, ``dpgov policy show``, the audit at any seq) agree. An entry the rules do
not allow (an unauthorised set, an approval by someone not eligible) changes nothing and is
listed in :attr:`PolicyHistory.ignored`; the writing functions refuse to write one.

Before any set, the policy packaged with dpgov (:func:`dpgov.policy.load.packaged_policy_path`)
is in force; a dataset's own policy overrides the ledger-wide one for that dataset.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgov import names
from dpgov.errors import Refused, UsageError
from dpgov.identity import acting_identity
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import Entry, canonical
from dpgov.ledger.schema import ACTIVE
from dpgov.ledger.store import LedgerStore
from dpgov.ledger.verified import POLICY_KIND, LedgerInconsistent, VerifiedState, VPolicyEntry
from dpgov.policy.load import LoadedPolicy, load_policy, packaged_policy_path, parse_policy
from dpgov.policy.schema import Policy, approver_key

SET, PROPOSE, APPROVE = "set", "propose", "approve"


@dataclass(frozen=True)
class PolicyRecord:
    """One policy that took effect (``seq`` 0: the packaged policy, in force from the start)."""

    seq: int  # the entry at which it took effect
    dataset: str | None  # the dataset it governs (None: the whole ledger)
    loaded: LoadedPolicy
    set_by: str  # who set or proposed it
    reason: str
    time: str | None
    proposal: int | None = None  # the proposal's seq, when it took effect by approvals
    approvers: tuple[str, ...] = ()

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "dataset": self.dataset,
            "sha256": self.sha256,
            "file": str(self.loaded.path),
            "set_by": self.set_by,
            "reason": self.reason,
            "time": self.time,
            "proposal": self.proposal,
            "approvers": list(self.approvers),
            "source": "ledger" if self.seq else "packaged",
        }


@dataclass
class Proposal:
    seq: int
    dataset: str | None
    loaded: LoadedPolicy
    proposer: str
    reason: str
    time: str
    raises: list[str]
    required: int
    approvers: list[str] | None  # who may approve (None: anyone)
    service: list[str]
    approved_by: list[str] = field(default_factory=list)
    status: str = "open"  # open | in force | lapsed

    def eligible(self, who: str) -> str | None:
        """Why ``who`` may not approve this proposal, or None when they may."""
        key = approver_key(who)
        if key == approver_key(self.proposer):
            return f"{who} proposed it"
        if key in {approver_key(s) for s in self.service}:
            return f"{who} is a service identity (governance.service_identities)"
        if self.approvers is not None and key not in {approver_key(a) for a in self.approvers}:
            return f"{who} is not an approver of the policy in force (approvals.approvers)"
        if key in {approver_key(a) for a in self.approved_by}:
            return f"{who} approved it already"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "proposal": self.seq,
            "dataset": self.dataset,
            "sha256": self.loaded.sha256,
            "proposed_by": self.proposer,
            "reason": self.reason,
            "time": self.time,
            "raises": self.raises,
            "required": self.required,
            "approved_by": list(self.approved_by),
            "status": self.status,
        }


@dataclass
class PolicyHistory:
    """What the ``policy_set`` entries up to some seq mean."""

    default: PolicyRecord
    changes: list[PolicyRecord] = field(default_factory=list)  # in the order they took effect
    proposals: dict[int, Proposal] = field(default_factory=dict)
    ignored: list[tuple[int, str]] = field(default_factory=list)  # (seq, why)
    first_setter: str | None = None

    def in_force(self, dataset: str | None = None, seq: int | None = None) -> PolicyRecord:
        """The policy in force for ``dataset`` (its own, else the ledger-wide one) after entry
        ``seq`` (default: now)."""
        found: PolicyRecord | None = None
        wide: PolicyRecord | None = None
        for rec in self.changes:
            if seq is not None and rec.seq > seq:
                break
            if rec.dataset is None:
                wide = rec
            elif dataset is not None and rec.dataset == dataset:
                found = rec
        return found or wide or self.default

    def setters(self, dataset: str | None) -> list[str] | None:
        """Who may set a policy for ``dataset`` now (None: anyone, no policy ever set)."""
        if self.first_setter is None:
            return None
        named = self.in_force(dataset).loaded.policy.governance.policy_setters
        return list(named) if named is not None else [self.first_setter]


def packaged() -> PolicyRecord:
    """The packaged policy, in force before any set."""
    return PolicyRecord(0, None, _packaged(), "dpgov", "packaged default", None)


@functools.cache
def _packaged() -> LoadedPolicy:
    return load_policy(packaged_policy_path())


@functools.lru_cache(maxsize=256)
def _parse(text: str, file: str, seq: int) -> LoadedPolicy:
    """A recorded policy's text validated (cached: entries never change once checked)."""
    return parse_policy(
        text.encode("utf-8"), path=Path(file), where=f"policy of ledger entry {seq}"
    )


def _loaded(e: VPolicyEntry, dataset: str | None) -> LoadedPolicy:
    """The policy an entry carries, checked: its text hashes to its SHA-256 and parses (with
    the one loader) to its recorded JSON."""
    p = e.payload.get("policy")
    if not isinstance(p, dict) or not isinstance(p.get("yaml"), str):
        raise LedgerInconsistent(f"ledger entry {e.seq} ({POLICY_KIND}) carries no policy", e.seq)
    raw = p["yaml"].encode("utf-8")
    sha = hashlib.sha256(raw).hexdigest()
    if sha != p.get("sha256"):
        raise LedgerInconsistent(
            f"ledger entry {e.seq} ({POLICY_KIND}): the policy text does not hash to its "
            f"recorded SHA-256",
            e.seq,
        )
    file = Path(str(p.get("file") or f"ledger-entry-{e.seq}.yaml"))
    try:
        loaded = _parse(p["yaml"], str(file), e.seq)
    except UsageError as err:
        raise LedgerInconsistent(f"ledger entry {e.seq} ({POLICY_KIND}): {err}", e.seq) from err
    if p.get("json") != json.loads(canonical(loaded.policy.model_dump(mode="json"))):
        raise LedgerInconsistent(
            f"ledger entry {e.seq} ({POLICY_KIND}): the policy text does not parse to its "
            f"recorded content",
            e.seq,
        )
    return LoadedPolicy(
        policy=loaded.policy,
        path=file,
        sha256=sha,
        text=loaded.text,
        seq=e.seq,
        dataset=dataset,
    )


def _scope(e: VPolicyEntry) -> str | None:
    ds = e.payload.get("dataset")
    if ds is not None and not isinstance(ds, str):
        raise LedgerInconsistent(f"ledger entry {e.seq} ({POLICY_KIND}): bad dataset", e.seq)
    return ds


def history(
    entries: Sequence[VPolicyEntry], *, default: PolicyRecord | None = None
) -> PolicyHistory:
    """The meaning of ``entries`` (every ``policy_set`` entry, in ledger order)."""
    h = PolicyHistory(default=default or packaged())
    for e in entries:
        action = e.payload.get("action")
        reason = str(e.payload.get("reason") or "")
        if action in (SET, PROPOSE):
            dataset = _scope(e)
            allowed = h.setters(dataset)
            if allowed is not None and approver_key(e.actor) not in {
                approver_key(a) for a in allowed
            }:
                h.ignored.append((e.seq, f"{e.actor} may not set the policy"))
                continue
            if h.first_setter is None:
                h.first_setter = e.actor
            loaded = _loaded(e, dataset)
            if action == SET:
                _take_effect(h, PolicyRecord(e.seq, dataset, loaded, e.actor, reason, e.time))
                continue
            base = h.in_force(dataset).loaded.policy
            raises = e.payload.get("raises")
            h.proposals[e.seq] = Proposal(
                seq=e.seq,
                dataset=dataset,
                loaded=loaded,
                proposer=e.actor,
                reason=reason,
                time=e.time,
                raises=[str(r) for r in raises] if isinstance(raises, list) else [],
                required=base.approvals.required,
                approvers=base.approvals.approvers,
                service=list(base.governance.service_identities),
            )
            if base.approvals.required == 0:  # pragma: no cover - set_policy writes a set then
                _effect(h, h.proposals[e.seq], e.seq)
        elif action == APPROVE:
            target = e.payload.get("proposal")
            prop = h.proposals.get(target) if isinstance(target, int) else None
            if prop is None or prop.status != "open":
                h.ignored.append((e.seq, f"approves proposal {target!r}, not open"))
                continue
            why = prop.eligible(e.actor)
            if why is not None:
                h.ignored.append((e.seq, why))
                continue
            prop.approved_by.append(e.actor)
            if len(prop.approved_by) >= prop.required:
                _effect(h, prop, e.seq)
        else:
            h.ignored.append((e.seq, f"unknown action {action!r}"))
    return h


def _effect(h: PolicyHistory, prop: Proposal, seq: int) -> None:
    rec = PolicyRecord(
        seq,
        prop.dataset,
        LoadedPolicy(
            policy=prop.loaded.policy,
            path=prop.loaded.path,
            sha256=prop.loaded.sha256,
            text=prop.loaded.text,
            seq=seq,
            dataset=prop.dataset,
        ),
        prop.proposer,
        prop.reason,
        prop.time,
        proposal=prop.seq,
        approvers=tuple(prop.approved_by),
    )
    _take_effect(h, rec)
    prop.status = "in force"


def _take_effect(h: PolicyHistory, rec: PolicyRecord) -> None:
    h.changes.append(rec)
    for other in h.proposals.values():
        if other.status == "open":
            other.status = "lapsed"


# ---------------------------------------------------------------------- what a change raises


def raised_limits(old: Policy, new: Policy) -> list[str]:
    """The limits ``new`` raises over ``old``: a larger ε or δ, another accountant, a move to
    fixed composition (ledger-wide or for a domain), another RDP order grid."""
    out = []
    pairs = (
        ("budget.epsilon_per_block", old.budget.epsilon_per_block, new.budget.epsilon_per_block),
        ("budget.delta", old.budget.delta, new.budget.delta),
        ("release.max_epsilon", old.release_max_epsilon(), new.release_max_epsilon()),
        ("release.max_delta", old.release_max_delta(), new.release_max_delta()),
    )
    for name, before, after in pairs:
        if after > before:
            out.append(f"{name} {before:g} → {after:g}")
    if old.budget.accountant != new.budget.accountant:
        out.append(f"budget.accountant {old.budget.accountant} → {new.budget.accountant}")
    # The rule that composes charges: tight PLD of a fixed schedule reads the same charges as
    # less than the RDP filter does, so a domain moved to fixed is a raise; another order grid
    # changes every filter figure (either way), so it needs the same approval.
    domains = sorted(set(old.budget.composition_by_domain) | set(new.budget.composition_by_domain))
    if old.budget.composition != new.budget.composition and new.budget.composition == "fixed":
        out.append(f"budget.composition {old.budget.composition} → fixed")
    for d in domains:
        was, now = old.budget.mode_for(d), new.budget.mode_for(d)
        if was != now and now == "fixed":
            out.append(f"budget.composition_by_domain[{d}] {was} → fixed")
    if tuple(old.budget.orders) != tuple(new.budget.orders):
        out.append(f"budget.orders ({len(old.budget.orders)} → {len(new.budget.orders)} orders)")
    return out


def _composition(policy: Policy) -> tuple[Any, ...]:
    b = policy.budget
    return (b.composition, tuple(sorted(b.composition_by_domain.items())), tuple(b.orders))


def _same_composition(new: Policy, ledger_wide: Policy, dataset: str) -> None:
    """A dataset's policy keeps the ledger-wide composition rule: a patient may span datasets,
    so the rule is set for the whole ledger or per id domain, never per dataset."""
    if _composition(new) != _composition(ledger_wide):
        b = ledger_wide.budget
        raise UsageError(
            f"policy for dataset {dataset}: budget.composition, composition_by_domain and "
            f"orders are set for the whole ledger (a patient may span datasets) and must equal "
            f"the ledger-wide policy's (composition {b.composition}, "
            f"{len(b.composition_by_domain)} domain override(s), {len(b.orders)} orders); "
            "nothing was recorded"
        )


def charged_datasets(st: VerifiedState, h: PolicyHistory, dataset: str | None) -> list[str]:
    """Datasets a change of the policy for ``dataset`` (None: ledger-wide) governs that have
    blocks with active charges (a ledger-wide change does not govern a dataset with its own)."""
    own = {rec.dataset for rec in h.changes if rec.dataset is not None}
    out = set()
    for (ds, _block), rids in st.charges.items():
        if dataset is not None and ds != dataset:
            continue
        if dataset is None and ds in own:
            continue
        if any(st.reservations[r].status in ACTIVE for r in rids):
            out.add(ds)
    return sorted(out)


# ---------------------------------------------------------------------- writing


def policy_history(ledger: LedgerStore) -> PolicyHistory:
    """The ledger's policy history, from its verified entries."""
    with ledger._read() as conn:
        st = ledger._state(conn)
    return history(st.policies)


def set_policy(
    ledger: LedgerStore,
    loaded: LoadedPolicy,
    *,
    dataset: str | None,
    reason: str,
    actor: str | None = None,
) -> tuple[Entry, str]:
    """Record ``loaded`` as the policy in force for ``dataset`` (None: the whole ledger), or
    as a proposal when it raises a limit over charged blocks and the policy in force asks for
    approvals. Returns the entry and its action (``set`` or ``propose``). Refused (nothing
    written) when the acting identity may not set policies. Who acts is the identity the
    deployment authenticates (:func:`dpgov.identity.acting_identity`); ``actor`` names it
    instead only for callers of the library (tests, benchmarks)."""
    who, identity = _who(ledger, actor)
    if dataset is not None:
        names.name(dataset, argument="--dataset")
    reason = _reason(reason)
    if not loaded.text:
        raise UsageError("the policy's YAML text is needed to record it (load it from a file)")
    with ledger._write() as conn:
        st = ledger._state(conn)
        h = history(st.policies)
        allowed = h.setters(dataset)
        if allowed is not None and approver_key(who) not in {approver_key(a) for a in allowed}:
            where = f"dataset {dataset}" if dataset else "this ledger"
            raise Refused(
                f"{who} may not set the policy of {where}: governance.policy_setters of the "
                f"policy in force is {', '.join(allowed)}; nothing was recorded"
            )
        current = h.in_force(dataset)
        if dataset is not None:
            _same_composition(loaded.policy, h.in_force(None).loaded.policy, dataset)
        raises = raised_limits(current.loaded.policy, loaded.policy)
        charged = charged_datasets(st, h, dataset) if raises else []
        needs = current.loaded.policy.approvals.required
        action = PROPOSE if raises and charged and needs > 0 else SET
        payload: dict[str, Any] = {
            "action": action,
            "dataset": dataset,
            "policy": {
                "yaml": loaded.text,
                "json": json.loads(canonical(loaded.policy.model_dump(mode="json"))),
                "sha256": loaded.sha256,
                "file": str(loaded.path),
            },
            "reason": reason,
            "replaces": {"seq": current.seq, "sha256": current.sha256},
            "raises": raises,
            "charged_datasets": charged,
            **identity,
        }
        if action == PROPOSE:
            payload["approvals_required"] = needs
        entry = append_entry(conn, POLICY_KIND, payload, who)
    return entry, action


def approve_proposal(
    ledger: LedgerStore, proposal: int, *, note: str = "", actor: str | None = None
) -> tuple[Entry, Proposal]:
    """Record ``actor``'s approval of the proposal made at entry ``proposal``; the proposal is
    in force once it has the approvals it needs. Refused (nothing written) when it is not
    open or the acting identity may not approve it (``actor``: as for :func:`set_policy`)."""
    who, identity = _who(ledger, actor)
    with ledger._write() as conn:
        st = ledger._state(conn)
        h = history(st.policies)
        prop = h.proposals.get(proposal)
        if prop is None:
            raise UsageError(f"entry {proposal} is not a policy proposal (dpgov policy history)")
        if prop.status != "open":
            raise Refused(f"proposal {proposal} is {prop.status}: nothing to approve")
        why = prop.eligible(who)
        if why is not None:
            raise Refused(f"{why}: the approval of proposal {proposal} was not recorded")
        payload = {
            "action": APPROVE,
            "proposal": proposal,
            "reason": _reason(note, empty=True),
            **identity,
        }
        entry = append_entry(conn, POLICY_KIND, payload, who)
    after = history((*st.policies, VPolicyEntry(entry.seq, entry.time, who, entry.payload)))
    return entry, after.proposals[proposal]


def _who(ledger: LedgerStore, actor: str | None) -> tuple[str, dict[str, str]]:
    """Who acts, and what the entry records of how they were authenticated."""
    if actor is not None:
        name = names.identity(actor, argument="actor")
        return name, {"identity": name, "authenticated_by": "caller"}
    ident = acting_identity(ledger)
    return ident.name, {"identity": ident.name, "authenticated_by": ident.method}


def _reason(text: str, *, empty: bool = False) -> str:
    text = " ".join(str(text).split())
    if not text and not empty:
        raise UsageError("--reason: say why the policy changes (it is recorded)")
    if len(text) > 1000:
        raise UsageError(f"--reason: at most 1000 characters, found {len(text)}")
    return text


__all__ = [
    "APPROVE",
    "PROPOSE",
    "SET",
    "PolicyHistory",
    "PolicyRecord",
    "Proposal",
    "approve_proposal",
    "charged_datasets",
    "history",
    "packaged",
    "policy_history",
    "raised_limits",
    "set_policy",
]
