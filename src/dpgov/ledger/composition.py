"""A block's composition: the cache of its composed accountant state, and the seals that let
a cached state be used.

Composition is commutative, so a block's spent ε depends only on the multiset of mechanisms
charged to it (pending, committed and aborted reservations; released ones cost nothing), which
:class:`dpgov.ledger.verified.VerifiedState` derives from the entries. The
``dpgov_composition_cache`` keeps one composed state per block and accountant, with the
multiset it covers and that multiset's digest. Anyone who may write the database can replace a
state and keep its digest, so a cached state is used only when a *seal* in the chain vouches
for it: the entry that stored it (a reservation, a commit, a release, a repair) records the
digest of its multiset and the SHA-256 of its blob (:class:`~dpgov.ledger.verified.Seal`).
A sealed state of exactly the wanted multiset is used as is; a sealed state of a sub-multiset
is extended by the missing charges only; anything else (unsealed, stale, damaged, for another
accountant) is recomposed from nothing. A tampered cache therefore costs time, never privacy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov.accounting import DpSgdMechanism, group
from dpgov.ledger.chain import canonical
from dpgov.ledger.schema import cache_t
from dpgov.ledger.verified import Multiset, Seal


def multiset_text(multiset: Multiset) -> str:
    """The cache's ``multiset`` column: canonical JSON of ``[[mechanism, count], …]``."""
    return canonical([[m.to_dict(), n] for m, n in multiset])


def digest(multiset: Multiset) -> str:
    return hashlib.sha256(multiset_text(multiset).encode()).hexdigest()


def blob_hash(blob: bytes) -> str:
    return hashlib.sha256(bytes(blob)).hexdigest()


def accountant_key(acc: Any) -> str:
    """The cache's name for an accountant (its discretisation included: states differ)."""
    return f"{acc.name}:{getattr(acc, 'discretization', '')}"


def cache_row(conn: Connection, dataset: str, block: str, key: str) -> Any:
    return conn.execute(
        sa.select(cache_t).where(
            cache_t.c.dataset == dataset, cache_t.c.block == block, cache_t.c.accountant == key
        )
    ).first()


def sealed(row: Any, seal: Seal | None) -> bool:
    """Does ``seal`` vouch for the cache ``row`` (its digest, multiset and state blob)?"""
    if row is None or seal is None:
        return False
    try:
        return bool(
            row.digest == seal.multiset
            and hashlib.sha256(str(row.multiset).encode()).hexdigest() == seal.multiset
            and blob_hash(row.state) == seal.state
        )
    except (TypeError, ValueError):
        return False


def composed_state(
    conn: Connection, dataset: str, block: str, acc: Any, multiset: Multiset, seal: Seal | None
) -> tuple[Any, bool]:
    """The composed state of ``multiset`` for a block: the cached state when ``seal`` vouches
    for it and it covers ``multiset`` (extended when it covers a sub-multiset), else composed
    from nothing. Returns (state, the cache holds exactly this state)."""
    row = cache_row(conn, dataset, block, accountant_key(acc))
    if sealed(row, seal):
        return from_cache(acc, row.state, row.multiset, multiset)
    return from_cache(acc, None, None, multiset)


def from_cache(acc: Any, blob: Any, text: Any, multiset: Multiset) -> tuple[Any, bool]:
    """``multiset`` composed from a trusted cached state (``blob``, of the multiset ``text``):
    the state itself when it is of ``multiset``, extended when it is of a sub-multiset, else
    composed from nothing (also when ``blob`` is None or damaged: recomposed, never trusted).
    Returns (state, the cache holds exactly this state)."""
    if blob is not None:
        try:
            cached_state = acc.loads(blob)
            cached = {json.dumps(m, sort_keys=True): n for m, n in json.loads(text)}
        except Exception:  # a damaged cache is recomposed, never trusted
            cached_state = None
        if cached_state is not None:
            current = {json.dumps(m.to_dict(), sort_keys=True): (m, n) for m, n in multiset}
            if cached == {k: n for k, (_, n) in current.items()}:
                return cached_state, True
            if all(k in current and current[k][1] >= n for k, n in cached.items()):
                state = cached_state
                for key, (mech, n) in current.items():
                    extra = n - cached.get(key, 0)
                    if extra:
                        state = acc.add(state, mech, extra)
                return state, False
    state = acc.empty()
    for mech, n in multiset:
        state = acc.add(state, mech, n)
    return state, False


def store_state(
    conn: Connection, dataset: str, block: str, acc: Any, multiset: Multiset, state: Any
) -> Seal:
    """Remember ``state`` as the composition of ``multiset`` for the block, and return the seal
    that the entry written in the same transaction must carry for it to be used."""
    key = accountant_key(acc)
    blob, text = acc.dumps(state), multiset_text(multiset)
    conn.execute(
        cache_t.delete().where(
            cache_t.c.dataset == dataset, cache_t.c.block == block, cache_t.c.accountant == key
        )
    )
    conn.execute(
        cache_t.insert().values(
            dataset=dataset,
            block=block,
            accountant=key,
            digest=digest(multiset),
            multiset=text,
            state=blob,
        )
    )
    return Seal(dataset, block, key, digest(multiset), blob_hash(blob))


@dataclass(frozen=True)
class Candidate:
    """A block's composition now, and after one more charge of a mechanism."""

    multiset: Multiset
    state: Any
    after: Multiset
    after_state: Any


def with_charge(
    conn: Connection,
    dataset: str,
    block: str,
    acc: Any,
    mechanism: DpSgdMechanism,
    multiset: Multiset,
    seal: Seal | None,
) -> Candidate:
    """The block's composition of ``multiset`` (its active charges), with ``mechanism``
    charged once more."""
    state, _ = composed_state(conn, dataset, block, acc, multiset, seal)
    after = group([m for m, n in multiset for _ in range(n)] + [mechanism])
    return Candidate(multiset, state, after, acc.add(state, mechanism))


def without(multiset: Multiset, remove: DpSgdMechanism, add: DpSgdMechanism | None) -> Multiset:
    """``multiset`` with one ``remove`` taken out and ``add`` (if any) put in."""
    mechs = [m for m, n in multiset for _ in range(n)]
    mechs.remove(remove)
    return group([*mechs, add] if add is not None else mechs)
