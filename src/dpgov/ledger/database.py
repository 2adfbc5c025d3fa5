"""Reaching the ledger's database: URLs, engines, transactions and the global write lock.

Every write takes one global lock (``BEGIN IMMEDIATE`` on SQLite, a transaction advisory lock
on PostgreSQL), which the hash chain needs anyway. Reads never take it: a read transaction is a
plain ``BEGIN`` (SQLite in WAL mode reads a snapshot beside a writer; PostgreSQL reads take no
advisory lock), so budgets, verification and the audit never wait behind a writer. A write
that has waited :data:`WAIT_NOTICE_S` for the lock says so on stderr, and what it waits for
(on PostgreSQL, the process holding it), then waits up to :data:`LOCK_TIMEOUT_S` in all.
A database that stops answering is
:class:`~dpgov.errors.LedgerUnavailable` (exit 2); a role that may not write is
:class:`~dpgov.errors.Refused` (exit 1). Both are mapped here, once, for every transaction.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dpgov.errors import LedgerUnavailable, Refused, UsageError

PG_LOCK_KEY = 0x6470676F76  # "dpgov"
WAIT_NOTICE_S = 1.0  # a writer waiting this long for the lock says what it waits for
LOCK_TIMEOUT_S = 120  # then LedgerUnavailable


def announce_wait(message: str) -> None:
    """Tell the person at the terminal what a write is waiting for (stderr, one line)."""
    print(f"dpgov: {message}", file=sys.stderr, flush=True)


def is_lock_error(err: BaseException) -> bool:
    """Is this SQLite's "database is locked / busy" (another writer holds the lock)?"""
    text = str(getattr(err, "orig", None) or err).lower()
    return "database is locked" in text or "database is busy" in text


def normalise_url(url: str) -> sa.URL:
    """The SQLAlchemy URL of a ledger: SQLite or PostgreSQL (psycopg 3), else UsageError."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as err:
        raise UsageError(
            f"ledger URL {url!r} is malformed: expected a SQLAlchemy URL such as "
            f"sqlite:///path/ledger.db or postgresql://user@host/db"
        ) from err
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(
            f"ledger URL {parsed.render_as_string(hide_password=True)!r}: "
            f"only sqlite and postgresql are supported"
        )
    return parsed


def shown(engine_or_url: Engine | sa.URL) -> str:
    """The URL without its password, for messages."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    return str(url.render_as_string(hide_password=True))


def create_engine(parsed: sa.URL) -> Engine:
    """An engine for a normalised URL (SQLite: its folder is created, and it is configured)."""
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed, connect_args={"timeout": LOCK_TIMEOUT_S}, poolclass=sa.pool.NullPool
        )
        configure_sqlite(engine)
        return engine
    try:
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    except ImportError as err:
        raise UsageError(
            f"ledger URL {shown(parsed)!r} needs the PostgreSQL driver: "
            f"pip install 'dpgov[postgres]'"
        ) from err


def configure_sqlite(engine: Engine) -> None:
    """WAL, full sync, a long busy timeout, and ``BEGIN IMMEDIATE`` for writes (the lock)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {LOCK_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not conn.get_execution_options().get("dpgov_write", False):
            conn.exec_driver_sql("BEGIN")
            return
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            _begin_immediate(cur, shown(conn.engine))
        finally:
            cur.close()


def _begin_immediate(cur: Any, where: str) -> None:
    """``BEGIN IMMEDIATE``, saying after :data:`WAIT_NOTICE_S` what it waits for."""
    start = time.monotonic()
    try:
        cur.execute(f"PRAGMA busy_timeout = {int(WAIT_NOTICE_S * 1000)}")
        try:
            cur.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as err:
            if not is_lock_error(err):
                raise
        announce_wait(
            f"waiting for the ledger's write lock on {where}: another process is writing "
            f"to the ledger (waiting up to {LOCK_TIMEOUT_S} s)"
        )
        left = max(1, int((LOCK_TIMEOUT_S - (time.monotonic() - start)) * 1000))
        cur.execute(f"PRAGMA busy_timeout = {left}")
        try:
            cur.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            if not is_lock_error(err):
                raise
            raise LedgerUnavailable(
                f"ledger database {where} does not answer: another process held its write "
                f"lock for {LOCK_TIMEOUT_S} s; nothing was recorded by this operation"
            ) from err
    finally:
        cur.execute(f"PRAGMA busy_timeout = {LOCK_TIMEOUT_S * 1000}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction holding the ledger's global write lock."""
    with (
        answering(engine),
        engine.connect().execution_options(dpgov_write=True) as conn,
        conn.begin(),
    ):
        if engine.dialect.name == "postgresql":
            _pg_lock(conn, shown(engine))
        yield conn


def _pg_lock(conn: Connection, where: str) -> None:
    """The transaction advisory lock: tried for :data:`WAIT_NOTICE_S`, then announced (with
    the process that holds it, when the role may see it) and waited for up to
    :data:`LOCK_TIMEOUT_S` in all (then ``lock_timeout`` ends the wait: LedgerUnavailable)."""
    try_lock = sa.text("SELECT pg_try_advisory_xact_lock(:k)")
    start = time.monotonic()
    while True:
        if conn.execute(try_lock, {"k": PG_LOCK_KEY}).scalar():
            return
        if time.monotonic() - start >= WAIT_NOTICE_S:
            break
        time.sleep(0.05)
    holder = conn.execute(
        sa.text(
            "SELECT a.pid, a.application_name, a.xact_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1 LIMIT 1"
        ),
        {"hi": PG_LOCK_KEY >> 32, "lo": PG_LOCK_KEY & 0xFFFFFFFF},
    ).first()
    who = "another process"
    if holder is not None:
        who = f"PostgreSQL backend {holder.pid}"
        if holder.application_name:
            who += f" ({holder.application_name})"
        if holder.xact_start is not None:
            who += f", in a transaction since {holder.xact_start:%H:%M:%S}"
    announce_wait(
        f"waiting for the ledger's write lock on {where}: held by {who} "
        f"(waiting up to {LOCK_TIMEOUT_S} s)"
    )
    left = max(1, int((LOCK_TIMEOUT_S - (time.monotonic() - start)) * 1000))
    conn.execute(sa.text(f"SET LOCAL lock_timeout = {left}"))
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    with answering(engine), engine.connect() as conn, conn.begin():
        yield conn


def _left_mid_command(err: sa.exc.ProgrammingError) -> bool:
    """psycopg's client-side refusal to use a connection whose last command never completed
    (no SQLSTATE: the server sent nothing): what a connection reset mid-command leaves, met by
    SQLAlchemy's pre-ping when it switches autocommit ("can't change 'autocommit' now:
    connection in transaction status ACTIVE"). Any other programming error is a bug, raised."""
    orig = err.orig
    return getattr(orig, "sqlstate", None) is None and "connection in transaction status" in str(
        orig
    )


@contextmanager
def answering(engine: Engine) -> Iterator[None]:
    """A database that stops answering (refused, reset, locked past the timeout) is
    :class:`LedgerUnavailable` (exit 2), not a traceback; its transaction was rolled back."""
    try:
        yield
    except sa.exc.ProgrammingError as err:
        if _left_mid_command(err):  # the server went away while a command was in flight
            raise LedgerUnavailable(
                f"ledger database {shown(engine)} does not answer: its connection broke during "
                f"a command; nothing was recorded by this operation unless `dpgov ledger show` "
                f"lists it"
            ) from err
        if getattr(err.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        reason = str(err.orig).strip().splitlines()[0]
        raise Refused(
            f"ledger database {shown(engine)} refused this operation ({reason}): this database "
            f"role may not write the ledger"
        ) from err
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as err:
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise LedgerUnavailable(
            f"ledger database {shown(engine)} does not answer: {reason}; nothing was recorded by "
            f"this operation unless `dpgov ledger show` lists it"
        ) from err
