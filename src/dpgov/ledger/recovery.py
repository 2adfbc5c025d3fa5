"""The ledger's keys and recovery: rotating the signing key, backing up, restoring.

- :func:`rotate_key` appends a ``key_rotated`` entry, signed by the current key, naming the new
  key's fingerprint; later entries are signed by the new key, and verification accepts each key
  in its range (earlier keys in ``DPGOV_LEDGER_HMAC_OLD_KEYS``).
- :func:`backup` writes every row of the entries and the projections, as stored, read in one
  consistent snapshot, to a JSON-lines file (the composition cache is left out: it is
  recomputed when needed). The header names the backup's head (seq, hash).
- :func:`restore` loads a backup into an empty ledger database and appends a chained
  ``restored`` entry naming the backup's head and the newest entry anchored before the
  restore (``lost_through``). Verification and the audit tell it apart from a cut tail: a cut
  tail leaves anchors beyond the head unexplained; a restore declares, in a chained (and, with
  a key, signed) entry, exactly which anchored entries it lost.

Every write here goes through the ledger's write lock and is anchored once committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpgov.errors import Refused, UsageError
from dpgov.ledger.anchoring import AnchorPoint, file_anchor_points, ledger_name, publish
from dpgov.ledger.appending import append_restored, take_appended
from dpgov.ledger.appending import rotate_key as _rotate
from dpgov.ledger.chain import Entry, Verification, keyring, verify_chain
from dpgov.ledger.database import read_transaction, write_transaction
from dpgov.ledger.schema import cache_t, class_cache_t, class_structures_t, entries_t, metadata

FORMAT = "dpgov-ledger-backup"
VERSION = 1
MIN_KEY_CHARS = 32


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    with write_transaction(engine) as conn:
        yield conn
        appended = take_appended(conn)
    publish(engine, appended)


# ---------------------------------------------------------------------------- keys
def check_new_key(text: str) -> bytes:
    """A new HMAC key as the environment will hold it: at least 32 characters, no whitespace
    or commas (``DPGOV_LEDGER_HMAC_OLD_KEYS`` separates keys with commas)."""
    if len(text) < MIN_KEY_CHARS:
        raise UsageError(
            f"the new key must hold at least {MIN_KEY_CHARS} characters, found {len(text)} "
            f"(make one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    if any(c.isspace() or c == "," for c in text):
        raise UsageError("the new key may not contain whitespace or commas")
    return text.encode()


def rotate_key(engine: Engine, new_key: bytes, *, reason: str, actor: str | None = None) -> Entry:
    """Append the ``key_rotated`` entry; from the next entry on, ``new_key`` signs."""
    with _write(engine) as conn:
        return _rotate(conn, new_key, actor, reason)


# ---------------------------------------------------------------------------- backup
@dataclass(frozen=True)
class BackupInfo:
    path: str
    head_seq: int
    head_hash: str
    entries: int
    rows: int
    time: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "entries": self.entries,
            "rows": self.rows,
            "time": self.time,
        }


CACHES = (cache_t, class_cache_t, class_structures_t)  # recomputed, never backed up


def _tables() -> list[sa.Table]:
    """What a backup holds: the entries, the projections and the membership beside the
    chain (``dpgov_members``: its digests are on the chain, its pseudonyms only here)."""
    return [t for t in metadata.sorted_tables if t not in CACHES]


def _cell(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    return value


def _uncell(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$base64"}:
        return base64.b64decode(value["$base64"])
    return value


def backup(engine: Engine, path: Path) -> BackupInfo:
    """Write the ledger's entries and projections, as stored, to ``path`` (JSON lines),
    from one consistent snapshot; written aside and renamed, so a backup is whole or absent."""
    if path.exists():
        raise UsageError(f"backup file {path} exists: choose a new name")
    if not path.parent.is_dir():
        raise UsageError(f"folder {path.parent} does not exist")
    conn_opts = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name != "sqlite" else {}
    lines: list[str] = []
    counts: dict[str, int] = {}
    head: dict[str, Any] | None = None
    with read_transaction(engine.execution_options(**conn_opts)) as conn:
        for table in _tables():
            rows = [dict(r) for r in conn.execute(sa.select(table)).mappings().all()]
            if table is entries_t:
                rows.sort(key=lambda r: int(r["seq"]))
                head = rows[-1] if rows else None
            counts[table.name] = len(rows)
            lines += [
                json.dumps({"table": table.name, "row": {k: _cell(v) for k, v in r.items()}})
                for r in rows
            ]
    if head is None:
        raise Refused("the ledger is empty: nothing to back up")
    time = datetime.now(UTC).isoformat(timespec="seconds")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "ledger": ledger_name(engine),
        "time": time,
        "head_seq": head["seq"],
        "head_hash": head["hash"],
        "rows": counts,
    }
    body = "\n".join([json.dumps(header), *lines, json.dumps({"end": sum(counts.values())})])
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(body + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    return BackupInfo(
        str(path), head["seq"], head["hash"], counts[entries_t.name], sum(counts.values()), time
    )


# ---------------------------------------------------------------------------- restore
@dataclass(frozen=True)
class Backup:
    header: dict[str, Any]
    rows: dict[str, list[dict[str, Any]]]
    sha256: str

    def entry_rows(self) -> list[tuple[Any, ...]]:
        cols = ("seq", "kind", "payload", "time", "actor", "prev_hash", "hash", "signature")
        return [tuple(r.get(c) for c in cols) for r in self.rows.get(entries_t.name, [])]


def read_backup(path: Path) -> Backup:
    """A backup file, checked whole (header, every row, the end line)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read backup {path}: {err.strerror or err}") from err
    try:
        lines = raw.decode("utf-8").splitlines()
        header = json.loads(lines[0])
        end = json.loads(lines[-1])
        body = [json.loads(x) for x in lines[1:-1]]
    except (UnicodeDecodeError, ValueError, IndexError) as err:
        raise UsageError(f"{path} is not a dpgov ledger backup (unreadable JSON lines)") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UsageError(f"{path} is not a dpgov ledger backup")
    if header.get("version") != VERSION:
        raise UsageError(f"{path}: backup format version {header.get('version')!r} is unknown")
    if not isinstance(end, dict) or end.get("end") != len(body):
        raise UsageError(f"{path} is cut short: its end line does not count {len(body)} rows")
    known = {t.name for t in _tables()}
    rows: dict[str, list[dict[str, Any]]] = {}
    for item in body:
        table = item.get("table") if isinstance(item, dict) else None
        if table not in known or not isinstance(item.get("row"), dict):
            raise UsageError(f"{path}: a row of unknown table {table!r}")
        rows.setdefault(table, []).append({k: _uncell(v) for k, v in item["row"].items()})
    return Backup(header, rows, hashlib.sha256(raw).hexdigest())


@dataclass(frozen=True)
class Restored:
    entry: Entry
    backup_seq: int
    lost_through: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.entry.seq,
            "hash": self.entry.hash,
            "backup_seq": self.backup_seq,
            "lost_through": self.lost_through,
            "lost": self.lost_through - self.backup_seq,
        }


def restore(
    engine: Engine,
    path: Path,
    *,
    anchors: Sequence[AnchorPoint] = (),
    reason: str,
    actor: str | None = None,
) -> Restored:
    """Load the backup at ``path`` into this (empty) ledger database, then append the
    ``restored`` entry. ``anchors`` are the tracking store's; the anchor file's are read here,
    those naming this ledger and those naming the ledger the backup was taken of.
    Refused when the backup's chain does not verify, or disagrees with an anchor of an entry it
    holds (not this ledger's backup, or altered)."""
    b = read_backup(path)
    rows = b.entry_rows()
    v: Verification = verify_chain(iter(rows), keyring())  # type: ignore[arg-type]
    if not v.ok:
        raise Refused(f"backup {path} does not verify at entry {v.first_bad_seq}: {v.reason}")
    if v.head_seq != b.header.get("head_seq") or v.head != b.header.get("head_hash"):
        raise Refused(f"backup {path}: its header does not name its last entry as the head")
    hashes = {int(r[0]): str(r[6]) for r in rows}
    names = {ledger_name(engine), str(b.header.get("ledger") or ledger_name(engine))}
    every = [p for name in sorted(names) for p in file_anchor_points(ledger=name)[0]]
    every += anchors  # the tracking store's
    lost_through = v.head_seq
    for a in every:
        if any(r.backup_seq < a.seq <= r.lost_through for r in v.restores):
            continue  # lost by an earlier restore, and declared so
        if a.seq <= v.head_seq and hashes.get(a.seq) != a.hash:
            raise Refused(
                f"backup {path} disagrees with the anchor of entry {a.seq} ({a.where}): it is "
                f"not a backup of this ledger, or it was altered"
            )
        lost_through = max(lost_through, a.seq)
    with _write(engine) as conn:
        if conn.execute(sa.select(entries_t.c.seq).limit(1)).first() is not None:
            raise UsageError(
                "the ledger database already holds entries: restore into an empty database "
                "(move the damaged one aside first)"
            )
        for table in _tables():
            batch = b.rows.get(table.name, [])
            if batch:
                cols = set(table.c.keys())
                conn.execute(
                    table.insert(), [{k: x for k, x in r.items() if k in cols} for r in batch]
                )
        entry = append_restored(
            conn,
            backup_seq=v.head_seq,
            backup_hash=v.head,
            lost_through=lost_through,
            payload={
                "reason": reason,
                "backup_time": b.header.get("time"),
                "backup_sha256": b.sha256,
                "lost": lost_through - v.head_seq,
            },
            actor=actor,
        )
    return Restored(entry, v.head_seq, lost_through)
