"""The projection tables and the composition cache against the entries.

:mod:`dpgov.ledger.verified` rebuilds what the entries say; this module compares the tables as
stored with it, row by row and column by column, in a fixed order (blocks by dataset and block,
reservations in ledger order, charges, then the cache), so the first disagreement named is
always the same one:

- ``dpgov_blocks``: patients, data version, retired, entry;
- ``dpgov_reservations``: dataset, status, mechanism charged now, planned steps, run id, entry,
  closing entry;
- ``dpgov_charges``: one row per (reservation, block) the reservation entries charge;
- ``dpgov_composition_cache``: a row whose block has a seal for its accountant must be that
  sealed state (digest, multiset and the SHA-256 of its blob). Rows without a seal (written
  before seals existed) are counted as *unsealed*: they are never used, so they are not a
  disagreement.

Enforcement reads the verified state, not the tables; the write operations refuse while the
tables of their dataset disagree (:func:`guard`), so a rewrite never goes unnoticed, and
``dpgov ledger repair`` rebuilds them from the entries with a chained record of what it found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov.errors import Refused
from dpgov.ledger.chain import Verification, canonical
from dpgov.ledger.composition import blob_hash
from dpgov.ledger.schema import blocks_t, cache_t, charges_t, reservations_t
from dpgov.ledger.verified import BlockKey, VBlock, VerifiedState, VReservation

BLOCKS, RESERVATIONS, CHARGES, CACHE = (
    "dpgov_blocks",
    "dpgov_reservations",
    "dpgov_charges",
    "dpgov_composition_cache",
)
ABSENT, PRESENT = "absent", "present"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:119] + "…"


@dataclass(frozen=True)
class Disagreement:
    """One table row that disagrees with the entries: which table, row and column, and the
    value stored against the value the entries derive."""

    table: str
    key: str
    column: str
    stored: str
    derived: str

    def line(self) -> str:
        if self.column == "(row)":
            return (
                f"{self.table} row {self.key}: {self.stored} in the table, {self.derived} in "
                f"the entries"
            )
        return (
            f"{self.table} row {self.key}: {self.column} is {self.stored}, the entries say "
            f"{self.derived}"
        )

    def to_dict(self) -> dict[str, str]:
        return {
            "table": self.table,
            "key": self.key,
            "column": self.column,
            "stored": self.stored,
            "derived": self.derived,
        }


@dataclass(frozen=True)
class Integrity:
    """The tables checked against the entries (``error``: the entries themselves could not
    be applied, so nothing was compared)."""

    disagreements: list[Disagreement] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    unsealed: int = 0
    error: str | None = None
    error_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.disagreements

    @property
    def reason(self) -> str | None:
        if self.error is not None:
            return self.error
        if not self.disagreements:
            return None
        more = len(self.disagreements) - 1
        return self.disagreements[0].line() + (f" (and {more} more)" if more else "")

    def summary(self) -> str:
        """One line: what was compared, and whether it agrees."""
        if self.error is not None:
            return f"tables NOT checked: {self.error}"
        c = self.checked
        what = (
            f"{c.get(BLOCKS, 0)} blocks, {c.get(RESERVATIONS, 0)} reservations, "
            f"{c.get(CHARGES, 0)} charges, {c.get(CACHE, 0)} cached states"
        )
        unsealed = (
            f"; {self.unsealed} cached states carry no seal and are never used"
            if self.unsealed
            else ""
        )
        if self.disagreements:
            n = len(self.disagreements)
            return f"tables: {n} rows disagree with the entries ({what}){unsealed}"
        return f"tables: {what} agree with the entries{unsealed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "checked": dict(self.checked),
            "unsealed_cache_rows": self.unsealed,
            "disagreements": [d.to_dict() for d in self.disagreements],
        }


def _value(v: Any) -> str:
    return "NULL" if v is None else repr(v) if isinstance(v, str) else str(v)


def _columns(table: str, key: str, pairs: Sequence[tuple[str, Any, Any]]) -> list[Disagreement]:
    return [
        Disagreement(table, key, col, _short(_value(s)), _short(_value(d)))
        for col, s, d in pairs
        if s != d
    ]


def _mechanism_text(stored: Any) -> str:
    try:
        return canonical(json.loads(stored))
    except (TypeError, ValueError):
        return str(stored)


def _compare_blocks(
    stored: dict[BlockKey, Any], derived: dict[BlockKey, VBlock]
) -> list[Disagreement]:
    out: list[Disagreement] = []
    for key in sorted(set(stored) | set(derived)):
        name = f"{key[0]}/{key[1]}"
        row, blk = stored.get(key), derived.get(key)
        if blk is None:
            out.append(Disagreement(BLOCKS, name, "(row)", PRESENT, ABSENT))
        elif row is None:
            out.append(Disagreement(BLOCKS, name, "(row)", ABSENT, f"{PRESENT} (entry {blk.seq})"))
        else:
            out += _columns(
                BLOCKS,
                name,
                [
                    ("patients", row.patients, blk.patients),
                    ("data_version", row.data_version, blk.data_version),
                    ("retired", bool(row.retired), blk.retired),
                    ("seq", row.seq, blk.seq),
                ],
            )
    return out


def block_disagreements(
    conn: Connection, st: VerifiedState, dataset: str | None
) -> list[Disagreement]:
    query = sa.select(blocks_t)
    if dataset is not None:
        query = query.where(blocks_t.c.dataset == dataset)
    stored = {(str(r.dataset), str(r.block)): r for r in conn.execute(query)}
    return _compare_blocks(stored, {(b.dataset, b.block): b for b in st.blocks_of(dataset)})


RESERVATION_COLUMNS = ("dataset", "status", "mechanism", "planned_steps", "run_id", "seq",
                       "closed_seq")  # fmt: skip


def _reservation_rows(conn: Connection, where: Any) -> dict[str, tuple[Any, ...]]:
    t = reservations_t
    cols = [t.c.id, *(t.c[name] for name in RESERVATION_COLUMNS)]
    return {str(r[0]): tuple(r[1:]) for r in conn.execute(sa.select(*cols).where(where))}


def _reservations_by_id(conn: Connection, ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for i in range(0, len(ids), 500):
        out.update(_reservation_rows(conn, reservations_t.c.id.in_(ids[i : i + 500])))
    return out


def _compare_reservations(
    stored: dict[str, tuple[Any, ...]], derived: dict[str, VReservation]
) -> list[Disagreement]:
    out: list[Disagreement] = []
    for rid, res in derived.items():
        row = stored.get(rid)
        want = (
            res.dataset,
            res.status,
            res.mechanism_text,
            res.planned_steps,
            res.run_id,
            res.seq,
            res.closed_seq,
        )
        if row == want:  # the common case: compared as stored, at once
            continue
        if row is None:
            out.append(
                Disagreement(RESERVATIONS, rid, "(row)", ABSENT, f"{PRESENT} (entry {res.seq})")
            )
            continue
        got = list(row)
        if got[2] != want[2]:  # equal JSON written another way is no disagreement
            got[2] = _mechanism_text(got[2])
        out += _columns(RESERVATIONS, rid, list(zip(RESERVATION_COLUMNS, got, want, strict=True)))
    out += [
        Disagreement(RESERVATIONS, rid, "(row)", PRESENT, ABSENT)
        for rid in sorted(set(stored) - set(derived))
    ]
    return out


def reservation_disagreements(
    conn: Connection, st: VerifiedState, dataset: str | None
) -> list[Disagreement]:
    derived = {r.id: r for r in st.reservations.values() if dataset in (None, r.dataset)}
    where = sa.true() if dataset is None else reservations_t.c.dataset == dataset
    stored = _reservation_rows(conn, where)
    missing = [rid for rid in derived if rid not in stored]
    if dataset is not None and missing:  # moved to another dataset, or deleted?
        stored.update(_reservations_by_id(conn, missing))
    return _compare_reservations(stored, derived)


def _compare_charges(
    stored: set[tuple[str, str, str]], derived: list[tuple[str, str, str]]
) -> list[Disagreement]:
    out = [
        Disagreement(CHARGES, f"{rid} {ds}/{b}", "(row)", ABSENT, PRESENT)
        for rid, ds, b in derived
        if (rid, ds, b) not in stored
    ]
    out += [
        Disagreement(CHARGES, f"{rid} {ds}/{b}", "(row)", PRESENT, ABSENT)
        for rid, ds, b in sorted(stored - set(derived))
    ]
    return out


def charge_disagreements(
    conn: Connection, st: VerifiedState, dataset: str | None
) -> list[Disagreement]:
    query = sa.select(charges_t.c.reservation_id, charges_t.c.dataset, charges_t.c.block)
    if dataset is not None:
        query = query.where(charges_t.c.dataset == dataset)
    stored = {(str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(query)}
    derived = [
        (r.id, r.dataset, b)
        for r in st.reservations.values()
        if dataset in (None, r.dataset)
        for b in r.blocks
    ]
    return _compare_charges(stored, derived)


def scoped_disagreements(
    conn: Connection, st: VerifiedState, dataset: str, blocks: Sequence[str]
) -> list[Disagreement]:
    """The projection rows a write on ``blocks`` of ``dataset`` relies on: those blocks'
    rows, their charges, and every reservation charged to them (by the entries or by the
    charges table)."""
    names = sorted(set(blocks))
    bt, ct = blocks_t, charges_t
    stored_blocks = {
        (str(r.dataset), str(r.block)): r
        for r in conn.execute(sa.select(bt).where(bt.c.dataset == dataset, bt.c.block.in_(names)))
    }
    derived_blocks = {
        (dataset, b): st.blocks[(dataset, b)] for b in names if (dataset, b) in st.blocks
    }
    stored_charges = {
        (str(r[0]), str(r[1]), str(r[2]))
        for r in conn.execute(
            sa.select(ct.c.reservation_id, ct.c.dataset, ct.c.block).where(
                ct.c.dataset == dataset, ct.c.block.in_(names)
            )
        )
    }
    derived_charges = [(rid, dataset, b) for b in names for rid in st.charges.get((dataset, b), [])]
    ids = sorted({c[0] for c in stored_charges} | {c[0] for c in derived_charges})
    derived = {rid: st.reservations[rid] for rid in ids if rid in st.reservations}
    return (
        _compare_blocks(stored_blocks, derived_blocks)
        + _compare_reservations(_reservations_by_id(conn, ids), derived)
        + _compare_charges(stored_charges, derived_charges)
    )


def cache_disagreements(
    conn: Connection, st: VerifiedState, dataset: str | None
) -> tuple[list[Disagreement], int, int]:
    """(disagreements, unsealed rows, rows) of the composition cache."""
    query = sa.select(cache_t)
    if dataset is not None:
        query = query.where(cache_t.c.dataset == dataset)
    rows = sorted(
        conn.execute(query).all(), key=lambda r: (str(r.dataset), str(r.block), str(r.accountant))
    )
    out: list[Disagreement] = []
    unsealed = 0
    for row in rows:
        ds, b, acc = str(row.dataset), str(row.block), str(row.accountant)
        name = f"{ds}/{b} {acc}"
        if (ds, b) not in st.blocks:
            out.append(Disagreement(CACHE, name, "(row)", PRESENT, "no such block"))
            continue
        seal = st.seal(ds, b, acc)
        if seal is None:
            unsealed += 1
            continue
        try:
            multiset = hashlib.sha256(str(row.multiset).encode()).hexdigest()
            state = blob_hash(row.state)
        except (TypeError, ValueError):
            multiset = state = "unreadable"
        out += _columns(
            CACHE,
            name,
            [
                ("digest", str(row.digest), seal.multiset),
                ("multiset", f"sha256 {multiset}", f"sha256 {seal.multiset}"),
                ("state", f"sha256 {state}", f"sha256 {seal.state}"),
            ],
        )
    return out, unsealed, len(rows)


def projection_disagreements(
    conn: Connection, st: VerifiedState, dataset: str | None = None
) -> list[Disagreement]:
    """Every projection row (of one dataset, or all) that disagrees with the entries."""
    return (
        block_disagreements(conn, st, dataset)
        + reservation_disagreements(conn, st, dataset)
        + charge_disagreements(conn, st, dataset)
    )


def check(conn: Connection, st: VerifiedState, dataset: str | None = None) -> Integrity:
    """The projections and the cache (of one dataset, or all) against ``st``."""
    found = projection_disagreements(conn, st, dataset)
    cache, unsealed, cache_rows = cache_disagreements(conn, st, dataset)
    reservations = [r for r in st.reservations.values() if dataset in (None, r.dataset)]
    return Integrity(
        disagreements=found + cache,
        checked={
            BLOCKS: len(st.blocks_of(dataset)),
            RESERVATIONS: len(reservations),
            CHARGES: sum(len(r.blocks) for r in reservations),
            CACHE: cache_rows,
        },
        unsealed=unsealed,
    )


def guard(
    conn: Connection, st: VerifiedState, dataset: str, blocks: Sequence[str] | None = None
) -> None:
    """Refuse (nothing written) while the projection rows a write relies on (``blocks`` of
    ``dataset``, or the whole dataset) disagree with the entries: the write would proceed on
    the entries' state, but a rewrite of the tables is never left unnoticed."""
    found = (
        projection_disagreements(conn, st, dataset)
        if blocks is None
        else scoped_disagreements(conn, st, dataset, blocks)
    )
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise Refused(
            f"ledger tables disagree with its entries: {found[0].line()}{more}; nothing was "
            f"written. `dpgov ledger verify` lists them; `dpgov ledger repair` rebuilds the "
            f"tables from the entries and records what it found"
        )


def combine(chain: Verification, tables: Integrity) -> Verification:
    """One verdict: the chain's, failed by the first table row that disagrees."""
    if not chain.ok or tables.ok:
        return chain
    return replace(
        chain,
        ok=False,
        first_bad_seq=tables.error_seq,
        reason=f"tables disagree with the entries: {tables.reason}",
        problems=[*chain.problems, *(d.line() for d in tables.disagreements)],
    )


def rebuild(conn: Connection, st: VerifiedState) -> None:
    """Rewrite the projection tables from ``st`` (inside the caller's write transaction)."""
    for table in (charges_t, reservations_t, blocks_t):
        conn.execute(table.delete())
    blocks = st.blocks_of()
    if blocks:
        conn.execute(
            blocks_t.insert(),
            [
                {
                    "dataset": b.dataset,
                    "block": b.block,
                    "patients": b.patients,
                    "data_version": b.data_version,
                    "retired": b.retired,
                    "seq": b.seq,
                }
                for b in blocks
            ],
        )
    reservations = list(st.reservations.values())
    if reservations:
        conn.execute(
            reservations_t.insert(),
            [
                {
                    "id": r.id,
                    "dataset": r.dataset,
                    "status": r.status,
                    "mechanism": r.mechanism_text,
                    "planned_steps": r.planned_steps,
                    "run_id": r.run_id,
                    "seq": r.seq,
                    "closed_seq": r.closed_seq,
                }
                for r in reservations
            ],
        )
        conn.execute(
            charges_t.insert(),
            [
                {"reservation_id": r.id, "dataset": r.dataset, "block": b}
                for r in reservations
                for b in r.blocks
            ],
        )


def drop_cache_rows(conn: Connection, found: Sequence[Disagreement]) -> None:
    """Delete the cache rows named in ``found`` (a tampered or stray cached state)."""
    for key in sorted({d.key for d in found if d.table == CACHE}):
        name, acc = key.rsplit(" ", 1)
        ds, b = name.split("/", 1)
        conn.execute(
            cache_t.delete().where(
                cache_t.c.dataset == ds, cache_t.c.block == b, cache_t.c.accountant == acc
            )
        )


__all__ = [
    "BLOCKS",
    "CACHE",
    "CHARGES",
    "RESERVATIONS",
    "Disagreement",
    "Integrity",
    "cache_disagreements",
    "check",
    "combine",
    "drop_cache_rows",
    "guard",
    "projection_disagreements",
    "rebuild",
    "scoped_disagreements",
]
