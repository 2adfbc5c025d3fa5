"""Reading the ledger as a whole: its entry rows, the chain's verification, the projections.

These read exactly what is stored, on a connection the caller opened (one transaction sees one
state), and verify nothing: the audit (:mod:`dpgov.report.collect`) reads the same rows to
judge them itself. What the ledger decides on is the state rebuilt from the entries
(:mod:`dpgov.ledger.verified`), never these tables as stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov.ledger.chain import GENESIS, Entry
from dpgov.ledger.records import BlockInfo
from dpgov.ledger.schema import blocks_t, charges_t, entries_t, reservations_t

# An entry row as stored: (seq, kind, payload text, time, actor, prev_hash, hash, signature).
EntryRow = tuple[Any, ...]


def entry_rows(conn: Connection) -> list[EntryRow]:
    """Every entry row as stored, in sequence order: what :func:`dpgov.ledger.verify_chain`
    verifies."""
    c = entries_t.c
    return [
        tuple(r)
        for r in conn.execute(
            sa.select(
                c.seq, c.kind, c.payload, c.time, c.actor, c.prev_hash, c.hash, c.signature
            ).order_by(c.seq)
        )
    ]


def entries(conn: Connection, kind: str | None = None, *, since_seq: int = 0) -> list[Entry]:
    query = sa.select(entries_t).where(entries_t.c.seq > since_seq).order_by(entries_t.c.seq)
    if kind is not None:
        query = query.where(entries_t.c.kind == kind)
    return [
        Entry(
            seq=r.seq,
            kind=r.kind,
            payload=json.loads(r.payload),
            time=r.time,
            actor=r.actor,
            prev_hash=r.prev_hash,
            hash=r.hash,
            signature=r.signature,
        )
        for r in conn.execute(query).all()
    ]


def head(conn: Connection) -> tuple[int, str]:
    """(sequence, hash) of the newest entry; (0, genesis) for an empty ledger."""
    last = conn.execute(
        sa.select(entries_t.c.seq, entries_t.c.hash).order_by(entries_t.c.seq.desc()).limit(1)
    ).first()
    return (last.seq, last.hash) if last else (0, GENESIS)


def datasets(conn: Connection) -> list[str]:
    return list(
        conn.execute(
            sa.select(blocks_t.c.dataset).distinct().order_by(blocks_t.c.dataset)
        ).scalars()
    )


def block_rows(conn: Connection, dataset: str | None = None) -> list[Any]:
    """The blocks projection, ordered by dataset and block (of one dataset, or all)."""
    query = sa.select(blocks_t).order_by(blocks_t.c.dataset, blocks_t.c.block)
    if dataset is not None:
        query = query.where(blocks_t.c.dataset == dataset)
    return list(conn.execute(query).all())


def blocks(conn: Connection, dataset: str | None = None) -> list[BlockInfo]:
    return [
        BlockInfo(r.dataset, r.block, r.patients, r.data_version, bool(r.retired))
        for r in block_rows(conn, dataset)
    ]


@dataclass(frozen=True)
class ProjectionRows:
    """The projection tables as stored, unordered and unparsed (the audit judges them)."""

    blocks: list[Any]
    reservations: list[Any]
    charges: list[Any]


def projection_rows(conn: Connection) -> ProjectionRows:
    return ProjectionRows(
        blocks=list(conn.execute(sa.select(blocks_t)).all()),
        reservations=list(conn.execute(sa.select(reservations_t)).all()),
        charges=list(conn.execute(sa.select(charges_t)).all()),
    )
