"""Reaching the ledger's database: URLs, engines, transactions and the global write lock.

Every write takes one global lock (``BEGIN IMMEDIATE`` on SQLite, a transaction advisory lock
on PostgreSQL), which the hash chain needs anyway. A database that stops answering is
:class:`~dpgov.errors.LedgerUnavailable` (exit 2); a role that may not write is
:class:`~dpgov.errors.Refused` (exit 1). Both are mapped here, once, for every transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dpgov.errors import LedgerUnavailable, Refused, UsageError

PG_LOCK_KEY = 0x6470676F76  # "dpgov"


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
        engine = sa.create_engine(parsed, connect_args={"timeout": 120}, poolclass=sa.pool.NullPool)
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
        cur.execute("PRAGMA busy_timeout = 120000")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("dpgov_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction holding the ledger's global write lock."""
    with (
        answering(engine),
        engine.connect().execution_options(dpgov_write=True) as conn,
        conn.begin(),
    ):
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    with answering(engine), engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def answering(engine: Engine) -> Iterator[None]:
    """A database that stops answering (refused, reset, locked past the timeout) is
    :class:`LedgerUnavailable` (exit 2), not a traceback; its transaction was rolled back."""
    try:
        yield
    except sa.exc.ProgrammingError as err:
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
