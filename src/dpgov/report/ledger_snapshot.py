"""The ledger as stored, read for the audit: entry rows, their verification, the projections.

Reading is defensive: a ledger that does not answer is unusable input (exit 2), but a corrupted
row or an unreadable projection becomes a finding, so the rest of the audit still runs. The
checks (:mod:`dpgov.report.checks`) are pure functions of what this returns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dpgov import config
from dpgov.errors import LedgerUnavailable, UsageError
from dpgov.ledger import Ledger, Verification
from dpgov.ledger.chain import hmac_key, verify_chain
from dpgov.ledger.snapshot import entry_rows, projection_rows
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import RawEntry
from dpgov.tracking.records import first_line

if TYPE_CHECKING:
    from dpgov.policy.schema import Budget


@dataclass(frozen=True)
class ProjectedBlock:
    """One row of the ledger's ``blocks`` table."""

    patients: int
    retired: bool
    data_version: str | None
    seq: int


@dataclass
class ProjectedReservation:
    """One row of the ledger's ``reservations`` table, with the blocks its charges name."""

    id: str
    dataset: str
    status: str
    mechanism: dict[str, object] | None  # None: the stored text is unreadable
    planned_steps: int
    run_id: str | None
    seq: int
    closed_seq: int | None
    blocks: list[str]


@dataclass
class LedgerSnapshot:
    """The ledger as stored: entry rows, their verification, and the projections."""

    url: str
    rows: list[RawEntry]
    verification: Verification
    hmac_key_set: bool
    blocks: dict[tuple[str, str], ProjectedBlock] | None = None
    reservations: dict[str, ProjectedReservation] | None = None
    budget: dict[tuple[str, str], float] | None = None  # the ledger's ε (projection + cache)
    problems: list[Finding] = field(default_factory=list)


def shown_url(url: str) -> str:
    """A database URL with its password hidden."""
    import sqlalchemy as sa

    try:
        return str(sa.make_url(url).render_as_string(hide_password=True))
    except sa.exc.ArgumentError:
        return url


def open_ledger(url: str | None = None) -> Ledger:
    """Open an existing ledger; never create one (an audit of nothing is bad input)."""
    import sqlalchemy as sa

    url = url or config.ledger_url()
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as err:
        raise UsageError(f"ledger URL {url!r} is malformed") from err
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if not db or db == ":memory:" or not Path(db).is_file():
            raise LedgerUnavailable(
                f"ledger database {shown_url(url)} does not exist: nothing to audit (set "
                f"DPGOV_LEDGER_URL or DPGOV_HOME to the ledger's)"
            )
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                tables = {
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
        except sqlite3.DatabaseError as err:
            raise LedgerUnavailable(
                f"ledger database {shown_url(url)} is unreadable: {err}"
            ) from err
        if "dpgov_entries" not in tables:
            raise LedgerUnavailable(
                f"{shown_url(url)} holds no dpgov ledger (no dpgov_entries table)"
            )
    return Ledger.open(url)


def snapshot_ledger(
    ledger: Ledger,
    budget: Budget,
    *,
    on_rows: Callable[[list[RawEntry]], None] | None = None,
) -> LedgerSnapshot:
    """Read every entry row, verify the chain over exactly those rows, read the projections.
    ``on_rows`` is called with the rows before the (slower) projections are read."""
    import sqlalchemy as sa

    try:
        with ledger.engine.connect() as conn:
            rows = entry_rows(conn)
    except sa.exc.SQLAlchemyError as err:
        raise LedgerUnavailable(
            f"ledger database {shown_url(str(ledger.engine.url))}: cannot read its entries: "
            f"{first_line(err)}"
        ) from err
    key = hmac_key()
    snap = LedgerSnapshot(
        url=ledger.engine.url.render_as_string(hide_password=True),
        rows=[RawEntry.from_row(r) for r in rows],
        verification=verify_chain(iter(rows), key),  # type: ignore[arg-type]
        hmac_key_set=key is not None,
    )
    if on_rows is not None:
        on_rows(snap.rows)
    _read_projections(ledger, snap)
    try:
        # the enforced figure (the RDP filter's under budget.composition adaptive, issue 16)
        snap.budget = {(s.dataset, s.block): s.epsilon_spent for s in ledger.budget(budget)}
    except Exception as err:  # a corrupted projection or cache: report, never trust
        snap.problems.append(
            finding(
                "projection_unreadable",
                f"the ledger cannot compute its own budget figures: {first_line(err)}",
            )
        )
    return snap


def _read_projections(ledger: Ledger, snap: LedgerSnapshot) -> None:
    import sqlalchemy as sa

    try:
        with ledger.engine.connect() as conn:
            tables = projection_rows(conn)
    except sa.exc.SQLAlchemyError as err:
        snap.problems.append(
            finding(
                "projection_unreadable",
                f"cannot read the ledger's projection tables: {first_line(err)}",
            )
        )
        return
    snap.blocks = {
        (str(b.dataset), str(b.block)): ProjectedBlock(
            patients=b.patients,
            retired=bool(b.retired),
            data_version=b.data_version,
            seq=b.seq,
        )
        for b in tables.blocks
    }
    per: dict[str, list[str]] = {}
    for ch in tables.charges:
        per.setdefault(str(ch.reservation_id), []).append(str(ch.block))
    out = {}
    for r in tables.reservations:
        try:
            mech = json.loads(r.mechanism)
            mech = mech if isinstance(mech, dict) else None
        except (TypeError, ValueError):
            mech = None
        out[str(r.id)] = ProjectedReservation(
            id=str(r.id),
            dataset=str(r.dataset),
            status=str(r.status),
            mechanism=mech,
            planned_steps=int(r.planned_steps),
            run_id=r.run_id,
            seq=int(r.seq),
            closed_seq=r.closed_seq,
            blocks=sorted(per.get(str(r.id), [])),
        )
    snap.reservations = out
