"""History classes: the patients of one domain with the same set of charges.

A charge (a reservation) to a block is a charge to each of its members, once per reservation
however many of its blocks hold the patient. A patient's privacy loss is the composition of the
charges that reached them; patients holding the same set of blocks have the same charges, so
they form one *class* and one composition serves them all (cost grows with distinct histories,
not patients). A block's spent ε is the maximum over the classes among its members
(docs/composition.md, "History classes").

- The *structure* of a domain (which blocks each class holds, and how many patients) is
  derived from the membership (:mod:`dpgov.ledger.membership`, checked against the chained
  digests) with numpy: one bit per block, patients grouped by their bitmask. It is addressed by
  the digest of the domain's membership digests (:func:`structure_key`), and a cached structure
  is used only when a chained seal vouches for its bytes.
- A block registered without members (a *legacy* block) is conservative: it reaches every
  patient of its domain, and of every domain with a block in its dataset
  (:meth:`~dpgov.ledger.members_state.MemberState.legacy_of`). Its charges reach every class,
  and every charge of the domain reaches it: the legacy blocks of a domain share one
  pseudo-class whose charges are all of the domain's (a legacy block's ε is the largest over
  the domains it is linked to).
- A class's composed state (per accountant) is cached in ``dpgov_class_cache`` under its class
  key, with the multiset it composes; it is used only under a chained seal of that multiset and
  blob (``class_composition`` on the entry that stored it), extended when it composes a
  sub-multiset, and recomposed otherwise. A tampered cache costs time, never privacy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov.accounting import DpSgdMechanism, group
from dpgov.ledger import membership
from dpgov.ledger.chain import canonical
from dpgov.ledger.composition import (
    accountant_key,
    blob_hash,
    digest,
    from_cache,
    multiset_text,
)
from dpgov.ledger.members_state import BlockKey, MemberState
from dpgov.ledger.schema import ACTIVE, class_cache_t, class_structures_t
from dpgov.ledger.verified import Multiset, VerifiedState


@dataclass(frozen=True)
class Structure:
    """A domain's classes: member blocks (sorted) and, per class, the indices of the blocks
    holding its patients and how many patients it has."""

    blocks: tuple[BlockKey, ...]
    classes: tuple[tuple[tuple[int, ...], int], ...]

    def to_bytes(self) -> bytes:
        return canonical(
            {"blocks": [list(b) for b in self.blocks], "classes": [list(c) for c in self.classes]}
        ).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Structure:
        data = json.loads(bytes(blob))
        blocks = tuple((str(ds), str(b)) for ds, b in data["blocks"])
        classes = tuple((tuple(int(i) for i in idx), int(n)) for idx, n in data["classes"])
        return cls(blocks, classes)


def structure_key(domain: str, ms: MemberState) -> str:
    """The digest of a domain's membership digests (what its structure depends on)."""
    items = [
        [ds, b, ms.blocks[(ds, b)].digest]
        for ds, b in ms.domain_blocks(domain)
        if ms.blocks[(ds, b)].digest is not None
    ]
    return hashlib.sha256(canonical([domain, items]).encode()).hexdigest()


def compute_structure(blobs: dict[BlockKey, bytes]) -> Structure:
    """Group the patients of the packed memberships ``blobs`` by the set of blocks holding
    them (exact: one bit per block, no hashing)."""
    import numpy as np

    keys = tuple(sorted(blobs))
    arrays = [membership.as_keys(blobs[k]) for k in keys]
    sizes = [len(a) for a in arrays]
    if not keys or sum(sizes) == 0:
        return Structure(keys, ())
    hi = np.concatenate([a["hi"] for a in arrays]).astype(np.uint64)  # native order: fast sorts
    lo = np.concatenate([a["lo"] for a in arrays]).astype(np.uint64)
    blk = np.repeat(np.arange(len(keys), dtype=np.int64), sizes)
    # by (hi, lo): two stable passes (lo is 16 bits: a radix sort), much faster than lexsort
    order = np.argsort(lo, kind="stable")
    order = order[np.argsort(hi[order], kind="stable")]
    hi, lo, blk = hi[order], lo[order], blk[order]
    first = np.ones(len(hi), dtype=bool)
    first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    starts = np.flatnonzero(first)
    words = (len(keys) + 63) // 64
    mask = np.zeros((len(starts), words), dtype=np.uint64)
    bits = np.left_shift(np.uint64(1), (blk % 64).astype(np.uint64))
    for w in range(words):
        vals = np.where(blk // 64 == w, bits, np.uint64(0))
        # a patient is at most once in a block: the sum of their distinct bits is their OR
        mask[:, w] = np.add.reduceat(vals, starts)
    rows = np.ascontiguousarray(mask).view(np.dtype((np.void, 8 * words))).ravel()
    unique, counts = np.unique(rows, return_counts=True)
    classes = []
    for row, n in zip(unique, counts, strict=True):
        ws = np.frombuffer(row.tobytes(), dtype=np.uint64)
        idx = tuple(
            int(w * 64 + i) for w in range(words) for i in range(64) if (int(ws[w]) >> i) & 1
        )
        classes.append((idx, int(n)))
    return Structure(keys, tuple(sorted(classes)))


@dataclass(frozen=True)
class HClass:
    """One history class: ``blocks`` hold its patients (for the legacy pseudo-class: the
    domain's legacy blocks); ``reach`` are the blocks whose charges reach it."""

    key: str
    domain: str
    blocks: tuple[BlockKey, ...]
    reach: tuple[BlockKey, ...]
    count: int
    legacy: bool = False


def class_key(domain: str, blocks: Sequence[BlockKey], legacy: bool = False) -> str:
    body = ["legacy", domain] if legacy else [domain, [list(b) for b in blocks]]
    return hashlib.sha256(canonical(body).encode()).hexdigest()


@dataclass(frozen=True)
class DomainView:
    domain: str
    structure_key: str
    structure: Structure
    legacy: tuple[BlockKey, ...]
    classes: tuple[HClass, ...]

    def of_block(self, key: BlockKey) -> list[HClass]:
        """The classes among a block's members (a legacy block: the legacy pseudo-class)."""
        return [c for c in self.classes if key in c.blocks]

    def reached_by(self, keys: Iterable[BlockKey]) -> list[HClass]:
        """The classes a charge to ``keys`` reaches."""
        ks = set(keys)
        return [c for c in self.classes if ks.intersection(c.reach)]


def view(domain: str, st: VerifiedState, structure: Structure) -> DomainView:
    """The classes of a domain from its structure, legacy blocks and empty member blocks."""
    ms = st.members
    own = ms.domain_blocks(domain)
    legacy = tuple(ms.legacy_of(domain))
    blocks = sorted(set(own) | set(legacy))
    out: list[HClass] = []
    held: set[BlockKey] = set()
    for idx, n in structure.classes:
        keys = tuple(structure.blocks[i] for i in idx)
        held.update(keys)
        reach = tuple(sorted(set(keys) | set(legacy)))
        out.append(HClass(class_key(domain, keys), domain, keys, reach, n))
    for k in blocks:  # a member block all of whose members were erased: its charges still
        if k not in held and k not in legacy:  # count (conservative, no patient)
            reach = tuple(sorted({k, *legacy}))
            out.append(HClass(class_key(domain, (k,)), domain, (k,), reach, 0))
    if legacy:
        patients = sum(st.blocks[k].patients for k in legacy)
        out.append(
            HClass(class_key(domain, (), True), domain, legacy, tuple(blocks), patients, True)
        )
    return DomainView(domain, structure_key(domain, ms), structure, legacy, tuple(out))


def domain_blobs(conn: Connection, ms: MemberState, domain: str) -> dict[BlockKey, bytes]:
    return membership.read(conn, ms, ms.domain_blocks(domain))


def load_structure(
    conn: Connection, ms: MemberState, domain: str, memo: dict[str, Structure]
) -> tuple[Structure, bool]:
    """A domain's structure: from the in-process memo, a sealed cache row, or computed from
    the verified membership. Returns (structure, sealed in the chain)."""
    key = structure_key(domain, ms)
    seal = ms.structure_seals.get(key)
    if key in memo:
        return memo[key], seal is not None
    if seal is not None:
        row = conn.execute(
            sa.select(class_structures_t.c.structure).where(class_structures_t.c.key == key)
        ).scalar()
        if row is not None and blob_hash(bytes(row)) == seal:
            try:
                found = Structure.from_bytes(bytes(row))
            except (ValueError, KeyError, TypeError):
                found = None
            if found is not None:
                memo[key] = found
                return found, True
    found = compute_structure(domain_blobs(conn, ms, domain))
    memo[key] = found
    return found, False


def store_structure(conn: Connection, key: str, structure: Structure) -> dict[str, str]:
    """Cache a structure; returns the seal the entry written with it must carry."""
    blob = structure.to_bytes()
    conn.execute(class_structures_t.delete().where(class_structures_t.c.key == key))
    conn.execute(class_structures_t.insert().values(key=key, structure=blob))
    return {"key": key, "state": blob_hash(blob)}


def domains_of(st: VerifiedState, keys: Iterable[BlockKey]) -> list[str]:
    """The domains whose patients a charge to ``keys`` may reach."""
    return sorted({d for k in keys for d in st.members.linked_domains(k)})


def views(
    conn: Connection, st: VerifiedState, domains: Iterable[str], memo: dict[str, Structure]
) -> dict[str, tuple[DomainView, bool]]:
    out = {}
    for d in domains:
        structure, is_sealed = load_structure(conn, st.members, d, memo)
        out[d] = (view(d, st, structure), is_sealed)
    return out


def reservations_of(st: VerifiedState, cls: HClass) -> list[str]:
    """The active reservations reaching a class, in ledger order (each once)."""
    rids = {rid for b in cls.reach for rid in st.charges.get(b, [])}
    active = [st.reservations[r] for r in rids if st.reservations[r].status in ACTIVE]
    return [r.id for r in sorted(active, key=lambda r: r.seq)]


def class_multiset(st: VerifiedState, cls: HClass) -> Multiset:
    return group(st.reservations[r].mechanism for r in reservations_of(st, cls))


# ---------------------------------------------------------------------- the class cache
def _cache_row(conn: Connection, key: str, acc_key: str) -> Any:
    c = class_cache_t.c
    return conn.execute(
        sa.select(class_cache_t).where(c.class_key == key, c.accountant == acc_key)
    ).first()


def class_state(
    conn: Connection, st: VerifiedState, key: str, acc: Any, multiset: Multiset
) -> tuple[Any, bool]:
    """The composed state of a class's ``multiset``: its cached state if a chained seal
    vouches for it (extended when it composes a sub-multiset), else composed from nothing.
    Returns (state, the cache holds exactly this state)."""
    acc_key = accountant_key(acc)
    seal = st.members.class_seals.get((key, acc_key))
    row = _cache_row(conn, key, acc_key) if seal is not None else None
    if row is not None and seal is not None:
        ok = False
        try:
            ok = (
                row.digest == seal[0]
                and hashlib.sha256(str(row.multiset).encode()).hexdigest() == seal[0]
                and blob_hash(row.state) == seal[1]
            )
        except Exception:  # a damaged cache is recomposed, never trusted
            ok = False
        if ok:
            return from_cache(acc, row.state, row.multiset, multiset)
    return from_cache(acc, None, None, multiset)


def store_class_state(
    conn: Connection,
    key: str,
    acc: Any,
    multiset: Multiset,
    state: Any,
    epsilon: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Cache a class's state; returns the seal the entry written with it must carry (with
    ``epsilon`` = (δ, ε of the state at δ), the ε too)."""
    acc_key = accountant_key(acc)
    blob, text = acc.dumps(state), multiset_text(multiset)
    c = class_cache_t.c
    conn.execute(class_cache_t.delete().where(c.class_key == key, c.accountant == acc_key))
    conn.execute(
        class_cache_t.insert().values(
            class_key=key, accountant=acc_key, digest=digest(multiset), multiset=text, state=blob
        )
    )
    seal: dict[str, Any] = {
        "class": key,
        "accountant": acc_key,
        "multiset": digest(multiset),
        "state": blob_hash(blob),
    }
    if epsilon is not None:
        seal["delta"], seal["epsilon"] = float(epsilon[0]), float(epsilon[1])
    return seal


class Composer:
    """Composes classes under one accountant, once per distinct multiset."""

    def __init__(self, conn: Connection, st: VerifiedState, acc: Any) -> None:
        self.conn, self.st, self.acc = conn, st, acc
        self._memo: dict[str, tuple[Any, bool]] = {}

    def state(self, cls: HClass, multiset: Multiset) -> tuple[Any, bool]:
        d = digest(multiset)
        if d not in self._memo:
            self._memo[d] = class_state(self.conn, self.st, cls.key, self.acc, multiset)
        return self._memo[d]


def maximal(items: Iterable[tuple[HClass, Multiset]]) -> list[tuple[HClass, Multiset]]:
    """The classes whose multiset is not contained in another's (distinct multisets). Adding
    a mechanism to a composition never lowers its ε, so a contained class never binds."""
    items = list(items)
    counts = [{json.dumps(m.to_dict(), sort_keys=True): n for m, n in ms} for _, ms in items]

    def within(a: dict[str, int], b: dict[str, int]) -> bool:
        return a != b and all(b.get(k, 0) >= n for k, n in a.items())

    return [
        item
        for item, mine in zip(items, counts, strict=True)
        if not any(within(mine, other) for other in counts)
    ]


def plus(multiset: Multiset, mechanism: DpSgdMechanism) -> Multiset:
    return group([m for m, n in multiset for _ in range(n)] + [mechanism])


__all__ = [
    "Composer",
    "DomainView",
    "HClass",
    "Structure",
    "class_key",
    "class_multiset",
    "class_state",
    "compute_structure",
    "domains_of",
    "load_structure",
    "maximal",
    "plus",
    "reservations_of",
    "store_class_state",
    "store_structure",
    "structure_key",
    "view",
    "views",
]
