"""A block's composition: its active charges as a multiset, and the cache of their state.

Composition is commutative, so a block's spent ε depends only on the multiset of mechanisms
charged to it (pending, committed and aborted reservations; released ones cost nothing). The
``dpgov_composition_cache`` keeps one composed accountant state per block and accountant, keyed
by a digest of the multiset it covers: a matching cache is used as is, a cache of a
sub-multiset is extended by the missing charges only, and anything else (stale, damaged, for
another accountant) is recomposed from nothing. The cache is never trusted beyond its digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov.accounting import DpSgdMechanism, group, mechanism_from_dict
from dpgov.ledger.chain import canonical
from dpgov.ledger.schema import ACTIVE, cache_t, charges_t, reservations_t

Multiset = list[tuple[DpSgdMechanism, int]]


def digest(multiset: Multiset) -> str:
    return hashlib.sha256(canonical([[m.to_dict(), n] for m, n in multiset]).encode()).hexdigest()


def accountant_key(acc: Any) -> str:
    """The cache's name for an accountant (its discretisation included: states differ)."""
    return f"{acc.name}:{getattr(acc, 'discretization', '')}"


def charged_multiset(conn: Connection, dataset: str, block: str) -> tuple[Multiset, int, int]:
    """The block's active charges as a canonical multiset, their count, pending count."""
    rows = conn.execute(
        sa.select(reservations_t.c.mechanism, reservations_t.c.status)
        .join(charges_t, charges_t.c.reservation_id == reservations_t.c.id)
        .where(
            charges_t.c.dataset == dataset,
            charges_t.c.block == block,
            reservations_t.c.status.in_(ACTIVE),
        )
    ).all()
    mechs = [mechanism_from_dict(json.loads(r.mechanism)) for r in rows]
    pending = sum(1 for r in rows if r.status == "pending")
    return group(mechs), len(rows), pending


def composed_state(
    conn: Connection, dataset: str, block: str, acc: Any, multiset: Multiset
) -> tuple[Any, bool]:
    """The composed state of ``multiset`` for a block, from the cache when it matches,
    extended incrementally when the cache holds a sub-multiset, else recomposed.
    Returns (state, cache_is_current)."""
    wanted = digest(multiset)
    row = conn.execute(
        sa.select(cache_t).where(
            cache_t.c.dataset == dataset,
            cache_t.c.block == block,
            cache_t.c.accountant == accountant_key(acc),
        )
    ).first()
    if row is not None:
        try:
            cached_state = acc.loads(row.state)
        except Exception:  # a damaged cache is recomputed, never trusted
            cached_state = None
        if cached_state is not None and row.digest == wanted:
            return cached_state, True
        if cached_state is not None:
            cached = {json.dumps(m, sort_keys=True): n for m, n in json.loads(row.multiset)}
            current = {json.dumps(m.to_dict(), sort_keys=True): (m, n) for m, n in multiset}
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
) -> None:
    """Remember ``state`` as the composition of ``multiset`` for the block."""
    key = accountant_key(acc)
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
            multiset=canonical([[m.to_dict(), n] for m, n in multiset]),
            state=acc.dumps(state),
        )
    )


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
    multiset: Multiset | None = None,
) -> Candidate:
    """The block's composition (of ``multiset``, default its active charges) with
    ``mechanism`` charged once more."""
    if multiset is None:
        multiset = charged_multiset(conn, dataset, block)[0]
    state, _ = composed_state(conn, dataset, block, acc, multiset)
    after = group([m for m, n in multiset for _ in range(n)] + [mechanism])
    return Candidate(multiset, state, after, acc.add(state, mechanism))
