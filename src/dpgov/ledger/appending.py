"""Appending one entry to the chain, inside the caller's write transaction.

The entry takes the next sequence number and the newest entry's hash as its previous hash
(the write lock, :mod:`dpgov.ledger.database`, makes that the newest), its hash is computed
over exactly what is stored (:mod:`dpgov.ledger.chain`), and it is signed when
``DPGOV_LEDGER_HMAC_KEY`` is set.

Keys (:mod:`dpgov.ledger.chain` describes the entries):

- the first append made with a key, on a ledger that has none recorded, first writes a
  ``signing_enabled`` entry naming the key's fingerprint, in the same transaction;
- once the chain names a key, an append without it, or with another key, is refused before
  anything is written (an unsigned or wrongly signed entry would break the chain);
- :func:`rotate_key` writes a ``key_rotated`` entry signed by the old key.

With an anchor file (``DPGOV_LEDGER_ANCHOR_FILE``), an append is refused when the file's newest
anchored entry is gone from the chain or changed (:func:`guard_tail`): a cut tail stops the
ledger rather than freeing the budget the cut entries had charged.

Every entry appended on a connection is remembered (:func:`take_appended`) so that the store
can anchor the head once the transaction has committed (:mod:`dpgov.ledger.anchoring`).
"""

from __future__ import annotations

import hmac
import json
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov import config
from dpgov.errors import Refused, UsageError
from dpgov.ledger.anchoring import anchor_file, ledger_name, newest_file_anchor
from dpgov.ledger.chain import (
    ALGORITHM,
    GENESIS,
    KEY_ENV,
    KEY_KINDS,
    KEY_ROTATED,
    RESTORED,
    SIGNING_ENABLED,
    Entry,
    Keyring,
    canonical,
    entry_hash,
    fingerprint,
    keyring,
    sign,
)
from dpgov.ledger.schema import entries_t

_APPENDED: weakref.WeakKeyDictionary[Connection, list[Entry]] = weakref.WeakKeyDictionary()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def take_appended(conn: Connection) -> list[Entry]:
    """The entries appended on ``conn`` since the last call (what its transaction commits)."""
    return _APPENDED.pop(conn, [])


@dataclass(frozen=True)
class SigningState:
    """What the chain says of its key: the fingerprint signing now (None: no key recorded),
    and the entry that made it so."""

    key: str | None
    since_seq: int | None


def signing_state(conn: Connection) -> SigningState:
    """The newest ``signing_enabled`` / ``key_rotated`` entry's key."""
    row = conn.execute(
        sa.select(entries_t.c.seq, entries_t.c.payload)
        .where(entries_t.c.kind.in_(KEY_KINDS))
        .order_by(entries_t.c.seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return SigningState(None, None)
    try:
        key = json.loads(row.payload).get("key")
    except (TypeError, ValueError, AttributeError):
        key = None
    return SigningState(str(key) if key else "unreadable", int(row.seq))


def _signing_key(conn: Connection, keys: Keyring | None) -> tuple[bytes | None, bool]:
    """The key to sign with, and whether signing must be enabled first. Refuses (UsageError,
    nothing written) a key that is not the chain's, and a missing key on a signed chain."""
    state = signing_state(conn)
    current = keys.current if keys is not None else None
    if current is None:
        if state.key is not None:
            raise UsageError(
                f"this ledger signs every entry since entry {state.since_seq} (key "
                f"{state.key}): set {KEY_ENV} to that key; nothing was written"
            )
        return None, False
    if state.key is None:
        return current, True
    if fingerprint(current) != state.key:
        raise UsageError(
            f"{KEY_ENV} (key {fingerprint(current)}) is not this ledger's signing key "
            f"({state.key}, since entry {state.since_seq}): set that key, or change keys with "
            f"`dpgov ledger rotate-key`; nothing was written"
        )
    _guard_last_signature(conn, current, state)
    return current, False


def _guard_last_signature(conn: Connection, key: bytes, state: SigningState) -> None:
    """Refuse to sign on top of a newest entry whose signature is gone or wrong (stripped or
    forged): the new signature would vouch for the tampered chain before it."""
    last = conn.execute(
        sa.select(entries_t.c.seq, entries_t.c.kind, entries_t.c.hash, entries_t.c.signature)
        .order_by(entries_t.c.seq.desc())
        .limit(1)
    ).first()
    if last is None:
        return
    signed_by_previous = last.seq == state.since_seq and last.kind == KEY_ROTATED
    if last.signature is not None and (
        signed_by_previous or hmac.compare_digest(last.signature, sign(last.hash, key) or "")
    ):
        return
    what = "is unsigned" if last.signature is None else "has a signature the key did not make"
    raise Refused(
        f"the newest ledger entry ({last.seq}, {last.kind}) {what}, but the ledger signs every "
        f"entry since entry {state.since_seq}: it was tampered with; nothing was written (run "
        f"dpgov ledger verify)"
    )


def guard_tail(conn: Connection) -> None:
    """Refuse to append (nothing written) when the newest entry of the anchor file is gone
    from the chain or has another hash: the tail was cut or rewritten, and appending would
    spend budget the cut entries had charged. A seq a ``restored`` entry declared lost is
    not a cut."""
    path = anchor_file()
    newest = newest_file_anchor(path, ledger_name(conn.engine)) if path is not None else None
    if newest is None:
        return
    row = conn.execute(sa.select(entries_t.c.hash).where(entries_t.c.seq == newest.seq)).first()
    if row is not None and row.hash == newest.hash:
        return
    if row is None:
        for payload in conn.execute(
            sa.select(entries_t.c.payload).where(entries_t.c.kind == RESTORED)
        ).scalars():
            try:
                p = json.loads(payload)
                if int(p["backup_seq"]) < newest.seq <= int(p["lost_through"]):
                    return
            except (TypeError, ValueError, KeyError):
                continue
    what = "is gone: the ledger's tail was cut" if row is None else "has another hash now"
    raise Refused(
        f"ledger entry {newest.seq}, anchored in {path} at {newest.time}, {what}; nothing was "
        f"written (run dpgov ledger verify; restore from a backup: docs/ledger.md)"
    )


def _write(
    conn: Connection,
    kind: str,
    payload: dict[str, Any],
    who: str,
    key: bytes | None,
    *,
    seq: int | None = None,
) -> Entry:
    last = conn.execute(
        sa.select(entries_t.c.seq, entries_t.c.hash).order_by(entries_t.c.seq.desc()).limit(1)
    ).first()
    seq = seq if seq is not None else ((last.seq + 1) if last else 1)
    prev = last.hash if last else GENESIS
    time = now()
    try:
        canonical(payload)
    except (TypeError, ValueError) as err:
        raise UsageError(f"ledger entry payload is not JSON-serialisable: {err}") from err
    payload = json.loads(canonical(payload))  # what is stored is exactly what is hashed
    digest = entry_hash(seq=seq, kind=kind, payload=payload, time=time, actor=who, prev_hash=prev)
    signature = sign(digest, key)
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
    entry = Entry(
        seq=seq,
        kind=kind,
        payload=payload,
        time=time,
        actor=who,
        prev_hash=prev,
        hash=digest,
        signature=signature,
    )
    _APPENDED.setdefault(conn, []).append(entry)
    return entry


def append_entry(conn: Connection, kind: str, payload: dict[str, Any], actor: str | None) -> Entry:
    """Write one entry (``actor`` defaults to the configured one) and return it; enroll the key
    first when this is the first append made with one."""
    who = actor or config.actor()
    guard_tail(conn)
    key, enroll = _signing_key(conn, keyring())
    if enroll:
        assert key is not None
        _write(conn, SIGNING_ENABLED, {"algorithm": ALGORITHM, "key": fingerprint(key)}, who, key)
    return _write(conn, kind, payload, who, key)


def rotate_key(conn: Connection, new_key: bytes, actor: str | None, reason: str) -> Entry:
    """Write the ``key_rotated`` entry (signed by the current key) after which ``new_key``
    signs. The current key must be the chain's."""
    who = actor or config.actor()
    keys = keyring()
    if keys is None or keys.current is None:
        raise UsageError(f"rotating the key needs the current one: set {KEY_ENV}")
    guard_tail(conn)
    key, enroll = _signing_key(conn, keys)
    assert key is not None
    if fingerprint(new_key) == fingerprint(key):
        raise UsageError("the new key is the current key: nothing to rotate")
    if enroll:  # the chain named no key: the current one is enrolled, then rotated away
        _write(conn, SIGNING_ENABLED, {"algorithm": ALGORITHM, "key": fingerprint(key)}, who, key)
    payload = {
        "algorithm": ALGORITHM,
        "previous": fingerprint(key),
        "key": fingerprint(new_key),
        "reason": reason,
    }
    return _write(conn, KEY_ROTATED, payload, who, key)


def append_restored(
    conn: Connection,
    *,
    backup_seq: int,
    backup_hash: str,
    lost_through: int,
    payload: dict[str, Any],
    actor: str | None,
) -> Entry:
    """The ``restored`` entry after a restored backup whose head is ``backup_seq``: it takes
    seq ``lost_through + 1``, so that no seq anchored before the restore is reused."""
    who = actor or config.actor()
    key, enroll = _signing_key(conn, keyring())
    if enroll:  # the backup was never signed: the next append enrolls the key
        key = None
    body = {
        **payload,
        "backup_seq": backup_seq,
        "backup_hash": backup_hash,
        "lost_through": lost_through,
    }
    return _write(conn, RESTORED, body, who, key, seq=lost_through + 1)
