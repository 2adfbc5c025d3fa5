"""Appending one entry to the chain, inside the caller's write transaction.

The entry takes the next sequence number and the newest entry's hash as its previous hash
(the write lock, :mod:`dpgov.ledger.database`, makes that the newest), its hash is computed
over exactly what is stored (:mod:`dpgov.ledger.chain`), and it is signed when
``DPGOV_LEDGER_HMAC_KEY`` is set.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov import config
from dpgov.errors import UsageError
from dpgov.ledger.chain import GENESIS, Entry, canonical, entry_hash, hmac_key, sign
from dpgov.ledger.schema import entries_t


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def append_entry(conn: Connection, kind: str, payload: dict[str, Any], actor: str | None) -> Entry:
    """Write one entry (``actor`` defaults to the configured one) and return it."""
    who = actor or config.actor()
    last = conn.execute(
        sa.select(entries_t.c.seq, entries_t.c.hash).order_by(entries_t.c.seq.desc()).limit(1)
    ).first()
    seq = (last.seq + 1) if last else 1
    prev = last.hash if last else GENESIS
    time = now()
    try:
        canonical(payload)
    except (TypeError, ValueError) as err:
        raise UsageError(f"ledger entry payload is not JSON-serialisable: {err}") from err
    payload = json.loads(canonical(payload))  # what is stored is exactly what is hashed
    digest = entry_hash(seq=seq, kind=kind, payload=payload, time=time, actor=who, prev_hash=prev)
    signature = sign(digest, hmac_key())
    conn.execute(
        entries_t.insert().values(
            seq=seq,
            kind=kind,
            payload=canonical(payload),
            time=time,
            actor=who,
            prev_hash=prev,
            hash=digest,
            signature=signature,
        )
    )
    return Entry(
        seq=seq,
        kind=kind,
        payload=payload,
        time=time,
        actor=who,
        prev_hash=prev,
        hash=digest,
        signature=signature,
    )
