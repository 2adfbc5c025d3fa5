"""Anchoring the chain head outside the ledger database, after every append.

The hash chain and the signatures detect an edited entry, but not a cut tail: deleting the
newest entries leaves a shorter chain that verifies. An *anchor* is a copy of the head
``(seq, hash)`` kept where whoever can write the ledger database cannot: the entry at every
anchored seq must still have the anchored hash, and the head must not be behind the newest
anchor (:func:`check_tail`).

After every write transaction that appended entries has committed, :func:`publish` hands the
new head to

- the **anchor file** named by ``DPGOV_LEDGER_ANCHOR_FILE`` (when set): one line
  ``<seq> <hash> <time> <ledger>`` appended per transaction, opened in append mode and
  fsync'ed. Put it on another volume than the database, writable by the service and not by
  the database's administrators (``chattr +a`` makes it append-only on Linux). Each line
  names its ledger, so ledgers may share a file;
- every **sink** registered in this process (:func:`register`): the upper layers register the
  tracking store's (:func:`dpgov.tracking.anchor.anchoring_appends`; every ``dpgov`` command
  runs with it). The ledger never imports them.

A failing sink is logged and never undoes the append: the entry is committed first. So the
lag is bounded: an anchor is missing only for the entries of a transaction whose process died
(or whose anchor store failed) between its commit and its anchor, until the next append
anchors a newer head, which covers every entry before it through the chain.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from dpgov.ledger.chain import Entry, Restore
from dpgov.ledger.schema import entries_t

ANCHOR_FILE_ENV = "DPGOV_LEDGER_ANCHOR_FILE"

log = logging.getLogger(__name__)


class AnchorSink(Protocol):
    """Receives the head of a ledger after an append committed: (ledger name, seq, hash).
    The ledger name is its URL with the password hidden."""

    def __call__(self, ledger: str, seq: int, hash: str) -> None: ...


_SINKS: list[AnchorSink] = []


def register(sink: AnchorSink) -> Callable[[], None]:
    """Add ``sink`` for this process; returns the function that removes it again."""
    _SINKS.append(sink)

    def unregister() -> None:
        if sink in _SINKS:
            _SINKS.remove(sink)

    return unregister


@contextmanager
def registered(sink: AnchorSink) -> Iterator[None]:
    """``sink`` receives every head appended while the block runs."""
    unregister = register(sink)
    try:
        yield
    finally:
        unregister()


def ledger_name(engine: Any) -> str:
    """How anchors name a ledger: its SQLAlchemy URL with the password hidden."""
    return str(engine.url.render_as_string(hide_password=True))


def publish(engine: Any, appended: Sequence[Entry]) -> None:
    """Anchor the newest of ``appended`` (entries a transaction committed) everywhere."""
    if not appended:
        return
    head = max(appended, key=lambda e: e.seq)
    name = ledger_name(engine)
    path = anchor_file()
    if path is not None:
        try:
            write_anchor_line(path, head.seq, head.hash, name)
        except OSError as err:
            log.warning(
                "ledger entry %s is committed, but the anchor file %s could not be written: "
                "%s (verify and the audit report the gap)",
                head.seq,
                path,
                err,
            )
    for sink in list(_SINKS):
        try:
            sink(name, head.seq, head.hash)
        except Exception as err:  # a sink never undoes a committed entry
            log.warning("ledger entry %s is committed, but not anchored: %s", head.seq, err)


# ---------------------------------------------------------------------------- the anchor file
@dataclass(frozen=True)
class FileAnchor:
    seq: int
    hash: str
    time: str
    line: int
    ledger: str | None = None


def anchor_file() -> Path | None:
    value = os.environ.get(ANCHOR_FILE_ENV)
    return Path(value).expanduser() if value else None


def write_anchor_line(path: Path, seq: int, digest: str, ledger: str) -> None:
    """Append one line ``<seq> <hash> <time> <ledger>`` with a single write, then fsync
    (O_APPEND: concurrent writers never interleave within a line). The ledger's name lets
    several ledgers (federated sites in one process) share one file."""
    time = datetime.now(UTC).isoformat(timespec="microseconds")
    name = " ".join(ledger.split())
    line = f"{seq} {digest} {time} {name}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(raw: str, n: int) -> FileAnchor | None:
    parts = raw.split(maxsplit=3)
    if len(parts) < 3 or not parts[0].isdigit() or len(parts[1]) != 64:
        return None
    return FileAnchor(int(parts[0]), parts[1], parts[2], n, parts[3] if len(parts) == 4 else None)


def _ours(a: FileAnchor, ledger: str | None) -> bool:
    return ledger is None or a.ledger is None or a.ledger == " ".join(ledger.split())


def read_anchor_file(path: Path, ledger: str | None = None) -> tuple[list[FileAnchor], list[str]]:
    """The anchors of an anchor file (of ``ledger`` only, when named), and what could not be
    read of it."""
    out: list[FileAnchor] = []
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], [f"anchor file {path} does not exist"]
    except OSError as err:
        return [], [f"anchor file {path} cannot be read: {err}"]
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        a = _parse(raw, n)
        if a is None:
            problems.append(f"anchor file {path}, line {n}: not '<seq> <hash> <time> <ledger>'")
        elif _ours(a, ledger):
            out.append(a)
    return out, problems


def newest_file_anchor(path: Path, ledger: str, chunk: int = 65536) -> FileAnchor | None:
    """The anchor of ``ledger``'s highest seq among the file's last lines that name it
    (concurrent writers may append slightly out of order); read backwards from the end until
    one is found. None when the file is absent or holds none."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            pos, carry = end, b""
            while pos > 0:
                pos = max(0, pos - chunk)
                f.seek(pos)
                block = f.read(chunk) + carry
                lines = block.split(b"\n")
                carry = lines.pop(0) if pos > 0 else b""  # maybe cut: read with the next block
                found = [
                    a
                    for raw in lines
                    if (a := _parse(raw.decode("utf-8", errors="replace"), 0)) and _ours(a, ledger)
                ]
                if found:
                    return max(found, key=lambda a: a.seq)
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------- checking the tail
@dataclass(frozen=True)
class AnchorPoint:
    """One anchor from anywhere: the file, the tracking store. ``where`` names it."""

    seq: int
    hash: str
    time: str
    where: str


@dataclass(frozen=True)
class TailProblem:
    """``kind``: ``tail_missing`` (an anchored entry is beyond the head), ``rewritten`` (the
    entry at an anchored seq has another hash, or is gone)."""

    kind: str
    seq: int
    detail: str


def lost_by_restore(seq: int, restores: Sequence[Restore]) -> Restore | None:
    """The restore that declared entry ``seq`` lost, if any."""
    return next((r for r in restores if r.backup_seq < seq <= r.lost_through), None)


def check_tail(
    hashes: Mapping[int, str],
    head_seq: int,
    anchors: Sequence[AnchorPoint],
    restores: Sequence[Restore] = (),
) -> list[TailProblem]:
    """Anchors against the chain (``hashes``: seq → hash). Anchors of entries a ``restored``
    entry declared lost are explained, not problems. Pure."""
    out: list[TailProblem] = []
    newest: AnchorPoint | None = None
    for a in anchors:
        if lost_by_restore(a.seq, restores) is not None:
            continue
        if a.seq > head_seq:
            if newest is None or a.seq > newest.seq:
                newest = a
            continue
        found = hashes.get(a.seq)
        if found is None:
            out.append(
                TailProblem(
                    "rewritten", a.seq, f"entry {a.seq}, anchored at {a.time} ({a.where}), is gone"
                )
            )
        elif found != a.hash:
            out.append(
                TailProblem(
                    "rewritten",
                    a.seq,
                    f"entry {a.seq} has hash {found[:12]}…, but {a.hash[:12]}… was anchored at "
                    f"{a.time} ({a.where}): the ledger was rewritten at or before entry {a.seq}",
                )
            )
    if newest is not None:
        out.insert(
            0,
            TailProblem(
                "tail_missing",
                newest.seq,
                f"the ledger's head is entry {head_seq}, but entry {newest.seq} was anchored at "
                f"{newest.time} ({newest.where}): its newest {newest.seq - head_seq} entries "
                f"are gone (a cut tail)",
            ),
        )
    return out


def file_anchor_points(
    path: Path | None = None, *, ledger: str | None = None
) -> tuple[list[AnchorPoint], list[str]]:
    """The anchor file's anchors (of ``ledger``, when named) as :class:`AnchorPoint` (none
    when no file is configured)."""
    path = path or anchor_file()
    if path is None:
        return [], []
    found, problems = read_anchor_file(path, ledger)
    return [AnchorPoint(a.seq, a.hash, a.time, f"{path}:{a.line}") for a in found], problems


def entry_hashes(engine: Any) -> dict[int, str]:
    """seq → hash of every entry as stored (what anchors are compared with)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(entries_t.c.seq, entries_t.c.hash)).all()
    return {int(r.seq): str(r.hash) for r in rows}
