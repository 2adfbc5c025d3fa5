"""The ledger's state as its chained entries say it is: what every budget decision reads.

The projection tables (``dpgov_blocks``, ``dpgov_reservations``, ``dpgov_charges``) and the
composition cache can be rewritten by anyone who may write the database; the entries cannot be
rewritten unnoticed (append-only triggers, the hash chain, signatures). So a reservation,
commit, release, abort, retirement, calibration and every budget figure read the state
rebuilt here from the entries, never the tables (:mod:`dpgov.ledger.integrity` compares the
two).

What is checked of the entries read: sequence numbers run 1, 2, … without a gap; every entry's
``prev_hash`` is the stored hash of the one before it; and every entry this state is built from
(:data:`STATE_KINDS`) hashes to its stored hash. Entries of other kinds (gate decisions,
approvals) are linked but not re-hashed: nothing here depends on their content, and
:func:`dpgov.ledger.verify_chain` checks them (signatures included). An entry that breaks these
rules, or a state change the protocol never writes (a second commit, a release of a committed
reservation, a charge to an unregistered block), is :class:`LedgerInconsistent` (exit 1):
nothing is charged, released or retired on a ledger whose entries cannot be trusted.

A :class:`VerifiedState` is immutable. :func:`refresh` extends one with the entries written
after it, once it has checked that the newest entry it saw is still there, unchanged (else it
rebuilds from the first entry): each :class:`dpgov.ledger.Ledger` keeps the state it verified,
so a long-lived process re-reads only what is new.

Entries that change a block's composition may carry *seals* (``"composition"``: dataset,
block, accountant, the digest of the charged multiset, the SHA-256 of the cached state) — the
only way a cached state is trusted (:mod:`dpgov.ledger.composition`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov.accounting import DpSgdMechanism, group, mechanism_from_dict
from dpgov.errors import Refused, UsageError
from dpgov.ledger.chain import GENESIS, canonical, entry_hash
from dpgov.ledger.members_state import EMPTY_MEMBERS, MEMBER_KINDS, MemberBuilder, MemberState
from dpgov.ledger.schema import ACTIVE, LEDGER_KINDS, entries_t

# Written by `dpgov ledger repair` (its own operation, never by Ledger.append): carries the
# disagreements it found and seals of the states it composed.
REPAIR_KIND = "ledger_repaired"
RESTORED = "restored"  # dpgov.ledger.chain's kind of the entry after a restored backup
STATE_KINDS = frozenset(LEDGER_KINDS | {REPAIR_KIND, RESTORED})
SEAL_KINDS = frozenset({"reservation", "commit", "release", REPAIR_KIND})
POLICY_KIND = "policy_set"  # the policy in force (dpgov.ledger.policies)

Multiset = list[tuple[DpSgdMechanism, int]]
BlockKey = tuple[str, str]


class LedgerInconsistent(Refused):
    """The entries cannot be trusted (a broken link, an edited entry, an impossible state
    change): nothing may be decided from them. Exit code 1."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True)
class Seal:
    """The chain's word that ``state`` (SHA-256 of the cache's blob) composes ``multiset``
    (the digest of a block's charged multiset) for one accountant."""

    dataset: str
    block: str
    accountant: str
    multiset: str
    state: str

    def to_dict(self) -> dict[str, str]:
        return {
            "dataset": self.dataset,
            "block": self.block,
            "accountant": self.accountant,
            "multiset": self.multiset,
            "state": self.state,
        }


@dataclass(frozen=True)
class VBlock:
    dataset: str
    block: str
    patients: int
    data_version: str | None
    retired: bool
    seq: int


@dataclass(frozen=True)
class VReservation:
    id: str
    dataset: str
    blocks: tuple[str, ...]
    status: str  # pending | committed | released | aborted
    planned: DpSgdMechanism
    mechanism: DpSgdMechanism  # what is charged now (the committed one once committed)
    run_id: str | None
    seq: int
    closed_seq: int | None
    accountant: str | None  # the accountant of the policy it was reserved under

    @property
    def planned_steps(self) -> int:
        return int(self.planned.steps)

    @functools.cached_property
    def mechanism_text(self) -> str:
        """What the reservations table stores for the mechanism charged now."""
        return canonical(self.mechanism.to_dict())

    @property
    def charged(self) -> DpSgdMechanism | None:
        return self.mechanism if self.status in ACTIVE else None


@dataclass(frozen=True)
class VPolicyEntry:
    """One ``policy_set`` entry as the chain holds it (its hash checked); what it means is
    decided by :mod:`dpgov.ledger.policies`."""

    seq: int
    time: str
    actor: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class VerifiedState:
    """Blocks, reservations, charges and seals as of entry ``seq`` (hash ``head``)."""

    seq: int
    head: str
    blocks: dict[BlockKey, VBlock]
    reservations: dict[str, VReservation]  # in ledger order
    charges: dict[BlockKey, list[str]]  # reservation ids per block, in ledger order
    seals: dict[tuple[str, str, str], Seal]
    # every `policy_set` entry, in ledger order (read by dpgov.ledger.policies)
    policies: tuple[VPolicyEntry, ...] = ()
    # membership digests, the pseudonym key, per-class seals (dpgov.ledger.members_state)
    members: MemberState = EMPTY_MEMBERS

    def datasets(self) -> list[str]:
        return sorted({ds for ds, _ in self.blocks})

    def blocks_of(self, dataset: str | None = None) -> list[VBlock]:
        """The blocks (of one dataset, or all), ordered by dataset and block."""
        return [self.blocks[k] for k in sorted(self.blocks) if dataset is None or k[0] == dataset]

    def check_dataset(self, dataset: str) -> None:
        if not any(ds == dataset for ds, _ in self.blocks):
            raise UsageError(f"unknown dataset {dataset!r}")

    def block(self, dataset: str, block: str) -> VBlock:
        found = self.blocks.get((dataset, block))
        if found is None:
            if not any(ds == dataset for ds, _ in self.blocks):
                raise UsageError(
                    f"unknown dataset {dataset!r}: register its blocks first "
                    f"(dpgov data prepare, or dpgov ledger add-block)"
                )
            raise UsageError(f"unknown block {block!r} in dataset {dataset!r}")
        return found

    def reservation(self, reservation_id: str) -> VReservation:
        found = self.reservations.get(reservation_id)
        if found is None:
            raise UsageError(f"unknown reservation {reservation_id!r}")
        return found

    def multiset(self, dataset: str, block: str) -> tuple[Multiset, int, int]:
        """The block's active charges as a canonical multiset, their count, pending count."""
        active = [
            r
            for r in (self.reservations[rid] for rid in self.charges.get((dataset, block), []))
            if r.status in ACTIVE
        ]
        pending = sum(1 for r in active if r.status == "pending")
        return group(r.mechanism for r in active), len(active), pending

    def seal(self, dataset: str, block: str, accountant: str) -> Seal | None:
        return self.seals.get((dataset, block, accountant))


EMPTY = VerifiedState(0, GENESIS, {}, {}, {}, {})

# One entry row as read here: (seq, kind, payload text or None, time, actor, prev_hash, hash).
Row = Sequence[Any]


def refresh(conn: Connection, prior: VerifiedState | None) -> VerifiedState:
    """``prior`` extended by the entries written since, verified; rebuilt from the first entry
    when ``prior`` is None or its newest entry is gone or changed."""
    c = entries_t.c
    if prior is not None and prior.seq > 0:
        still = conn.execute(sa.select(c.hash).where(c.seq == prior.seq)).scalar()
        if still != prior.head:
            prior = None
    base = prior or EMPTY
    payload = sa.case((c.kind.in_(sorted(STATE_KINDS)), c.payload), else_=sa.null())
    rows = conn.execute(
        sa.select(c.seq, c.kind, payload, c.time, c.actor, c.prev_hash, c.hash)
        .where(c.seq > base.seq)
        .order_by(c.seq)
    ).all()
    if not rows:
        return base
    return advance(base, rows)


def replay_rows(rows: Iterable[Row]) -> VerifiedState:
    """The state built from every entry row ``(seq, kind, payload, time, actor, prev_hash,
    hash, …)`` in order (extra columns, such as the signature, are ignored)."""
    return advance(EMPTY, rows)


def advance(base: VerifiedState, rows: Iterable[Row]) -> VerifiedState:
    """``base`` with ``rows`` (the entries after it, in order) verified and applied."""
    b = _Builder(base)
    for row in rows:
        b.apply(row)
    return b.freeze()


def _digest_matches(
    seq: int, kind: str, text: str, time: str, actor: str, prev: str, digest: str
) -> bool:
    """Does the entry hash to ``digest``? Entries are stored as canonical JSON, so the
    envelope is rebuilt from the stored text first (fast); anything else is recomputed from
    the parsed payload exactly as :func:`dpgov.ledger.chain.entry_hash` does."""
    envelope = (
        f'{{"actor":{_json_str(actor)},"kind":{_json_str(kind)},"payload":{text},'
        f'"prev_hash":{_json_str(prev)},"seq":{int(seq)},"time":{_json_str(time)}}}'
    )
    if hashlib.sha256(envelope.encode()).hexdigest() == digest:
        return True
    try:
        payload = json.loads(text)
        return bool(
            entry_hash(seq=seq, kind=kind, payload=payload, time=time, actor=actor, prev_hash=prev)
            == digest
        )
    except (TypeError, ValueError):
        return False


def _json_str(value: Any) -> str:
    """``canonical(value)``, without the encoder for a plain printable string."""
    if isinstance(value, str) and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return canonical(value)


def _name(p: dict[str, Any], key: str) -> str:
    value = p.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} is {value!r}, not a name")
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class _Builder:
    """Applies entries to a copy of a state (copy on write for the per-block lists)."""

    def __init__(self, base: VerifiedState) -> None:
        self.seq, self.head = base.seq, base.head
        self.blocks = dict(base.blocks)
        self.reservations = dict(base.reservations)
        self.charges = dict(base.charges)
        self.seals = dict(base.seals)
        self.policies: tuple[VPolicyEntry, ...] = base.policies
        self.members = MemberBuilder(base.members)
        self._owned: set[BlockKey] = set()

    def freeze(self) -> VerifiedState:
        return VerifiedState(
            self.seq,
            self.head,
            self.blocks,
            self.reservations,
            self.charges,
            self.seals,
            policies=self.policies,
            members=self.members.freeze(),
        )

    def apply(self, row: Row) -> None:
        seq, kind, text, time, actor, prev, digest = row[:7]
        seq = int(seq)
        if seq != self.seq + 1 and not self._restore_jump(seq, kind, text):
            what = "missing (deleted?)" if seq > self.seq + 1 else "duplicated or out of order"
            raise LedgerInconsistent(
                f"ledger entries cannot be trusted: expected entry {self.seq + 1}, found {seq} "
                f"(entry {self.seq + 1} is {what}); run `dpgov ledger verify`",
                min(seq, self.seq + 1),
            )
        if prev != self.head:
            raise LedgerInconsistent(
                f"ledger entries cannot be trusted: entry {seq} does not follow entry "
                f"{seq - 1} (its previous hash differs); run `dpgov ledger verify`",
                seq,
            )
        if kind in STATE_KINDS:
            if text is None or not _digest_matches(seq, kind, text, time, actor, prev, digest):
                raise LedgerInconsistent(
                    f"ledger entries cannot be trusted: entry {seq} ({kind}) does not match its "
                    f"hash (edited); run `dpgov ledger verify`",
                    seq,
                )
            try:
                payload = json.loads(text)
                if not isinstance(payload, dict):
                    raise ValueError("the payload is not a JSON object")
                self._apply(seq, kind, payload)
                if kind == POLICY_KIND:
                    entry = VPolicyEntry(seq, str(time), str(actor), payload)
                    self.policies = (*self.policies, entry)
            except LedgerInconsistent:
                raise
            except (KeyError, ValueError, TypeError) as err:
                what = f"lacks {err}" if isinstance(err, KeyError) else str(err)
                raise LedgerInconsistent(
                    f"ledger entry {seq} ({kind}) cannot be applied: {what}", seq
                ) from err
        self.seq, self.head = seq, str(digest)

    def _restore_jump(self, seq: int, kind: str, text: str | None) -> bool:
        """A ``restored`` entry may skip the seqs lost with a cut tail (its payload says which,
        as :func:`dpgov.ledger.verify_chain` checks): what they charged is unknown here."""
        if kind != RESTORED or seq <= self.seq + 1 or text is None:
            return False
        try:
            p = json.loads(text)
        except (TypeError, ValueError):
            return False
        return (
            isinstance(p, dict)
            and p.get("backup_seq") == self.seq
            and p.get("backup_hash") == self.head
            and p.get("lost_through") == seq - 1
        )

    def _bad(self, seq: int, kind: str, detail: str) -> LedgerInconsistent:
        return LedgerInconsistent(
            f"ledger entry {seq} ({kind}) cannot be applied: {detail}; the ledger never "
            f"writes this (run `dpgov ledger verify`)",
            seq,
        )

    def _apply(self, seq: int, kind: str, p: dict[str, Any]) -> None:
        if kind == "block_added":
            key = (_name(p, "dataset"), _name(p, "block"))
            patients = p["patients"]
            if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
                raise ValueError(f"'patients' is {patients!r}, not a positive integer")
            if key in self.blocks:
                raise self._bad(seq, kind, f"block {key[0]}/{key[1]} registered again")
            version = p.get("data_version")
            self.blocks[key] = VBlock(key[0], key[1], patients, _opt_str(version), False, seq)
            self.members.block_added(seq, key, patients, p)
        elif kind == "block_retired":
            key = (_name(p, "dataset"), _name(p, "block"))
            blk = self.blocks.get(key)
            if blk is None or blk.retired:
                what = "never registered" if blk is None else "already retired"
                raise self._bad(seq, kind, f"block {key[0]}/{key[1]} is {what}")
            self.blocks[key] = VBlock(
                blk.dataset, blk.block, blk.patients, blk.data_version, True, blk.seq
            )
        elif kind == "reservation":
            self._reserve(seq, kind, p)
        elif kind in ("commit", "release", "abort"):
            self._close(seq, kind, p)
        elif kind in MEMBER_KINDS:
            self.members.apply(seq, kind, p, set(self.blocks), lambda d: self._bad(seq, kind, d))
        if kind in SEAL_KINDS:
            self._seals(seq, kind, p.get("composition"))
        if kind in SEAL_KINDS or kind in MEMBER_KINDS or kind == "block_added":
            self.members.seals(p)

    def _reserve(self, seq: int, kind: str, p: dict[str, Any]) -> None:
        rid, dataset = _name(p, "reservation"), _name(p, "dataset")
        blocks = p["blocks"]
        if (
            not isinstance(blocks, list)
            or not blocks
            or not all(isinstance(b, str) for b in blocks)
        ):
            raise ValueError(f"'blocks' is {blocks!r}, not a list of block names")
        if len(set(blocks)) != len(blocks):
            raise self._bad(seq, kind, f"names a block twice: {blocks}")
        if rid in self.reservations:
            raise self._bad(seq, kind, f"reservation id {rid} used again")
        for b in blocks:
            if (dataset, b) not in self.blocks:
                raise self._bad(seq, kind, f"charges block {dataset}/{b}, never registered")
        mech = mechanism_from_dict(p["mechanism"])
        budget = p.get("budget")
        accountant = _opt_str(budget.get("accountant")) if isinstance(budget, dict) else None
        self.reservations[rid] = VReservation(
            rid,
            dataset,
            tuple(blocks),
            "pending",
            mech,
            mech,
            _opt_str(p.get("run_id")),
            seq,
            None,
            accountant,
        )
        for b in blocks:
            key = (dataset, b)
            if key not in self._owned:
                self.charges[key] = list(self.charges.get(key, []))
                self._owned.add(key)
            self.charges[key].append(rid)

    def _close(self, seq: int, kind: str, p: dict[str, Any]) -> None:
        rid = _name(p, "reservation")
        res = self.reservations.get(rid)
        if res is None:
            raise self._bad(seq, kind, f"closes reservation {rid}, never made")
        if res.status != "pending":
            raise self._bad(seq, kind, f"closes reservation {rid}, already {res.status}")
        mech = res.mechanism
        status = {"commit": "committed", "release": "released", "abort": "aborted"}[kind]
        if kind == "commit":
            mech = mechanism_from_dict(p["mechanism"])
            if mech.steps > res.planned.steps or mech != res.planned.with_steps(mech.steps):
                raise self._bad(
                    seq, kind, f"commits {mech.to_dict()}, not at most what {rid} reserved"
                )
        self.reservations[rid] = VReservation(
            res.id,
            res.dataset,
            res.blocks,
            status,
            res.planned,
            mech,
            res.run_id,
            res.seq,
            seq,
            res.accountant,
        )

    def _seals(self, seq: int, kind: str, seals: Any) -> None:
        if seals is None:
            return
        if not isinstance(seals, list):
            raise ValueError(f"'composition' is {seals!r}, not a list of seals")
        for s in seals:
            if not isinstance(s, dict):
                raise ValueError(f"seal {s!r} is not an object")
            fields = [_name(s, k) for k in ("dataset", "block", "accountant", "multiset", "state")]
            if (fields[0], fields[1]) not in self.blocks:
                raise self._bad(seq, kind, f"seals block {fields[0]}/{fields[1]}, never registered")
            self.seals[(fields[0], fields[1], fields[2])] = Seal(*fields)


__all__ = [
    "EMPTY",
    "POLICY_KIND",
    "REPAIR_KIND",
    "SEAL_KINDS",
    "STATE_KINDS",
    "LedgerInconsistent",
    "Multiset",
    "Seal",
    "VBlock",
    "VPolicyEntry",
    "VReservation",
    "VerifiedState",
    "advance",
    "refresh",
    "replay_rows",
]
