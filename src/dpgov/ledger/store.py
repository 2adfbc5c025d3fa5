"""The privacy ledger: an append-only, hash-chained record in a SQL database (SQLAlchemy).

State:
- ``entries`` is the ledger itself: append-only (database triggers refuse UPDATE and DELETE),
  hash-chained, one global order. Every state change is an entry.
- ``blocks``, ``reservations``, ``charges`` are projections of the entries, written in the same
  transaction as the entry that changes them, so they can never disagree with a committed
  entry. ``composition_cache`` holds each block's composed accountant state, keyed by a digest
  of the charges it covers; a stale or missing cache is recomputed, never trusted.

Concurrency: every write takes one global lock (``BEGIN IMMEDIATE`` on SQLite, a transaction
advisory lock on PostgreSQL), which the hash chain needs anyway. A reservation composes its
candidate state *before* taking the lock, then re-checks under the lock that the block's
charges did not change meanwhile (and recomposes if they did): the check and the charge are
atomic, and the slow part runs outside the lock.

Reservation protocol: reserve (the planned mechanism is charged to every block) → commit (the
mechanism actually run replaces the plan; never more steps than reserved) or release (only if
no step ran) or abort (a crash: the plan stays charged). Pending reservations count as spent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dpgov.accounting import (
    AccountantFailed,
    DpSgdMechanism,
    InfeasibleBudget,
    calibrate_against_states,
    get_accountant,
    group,
    mechanism_from_dict,
)
from dpgov.errors import BudgetExceeded, LedgerUnavailable, Refused, UsageError
from dpgov.ledger.chain import (
    GENESIS,
    Entry,
    Verification,
    canonical,
    entry_hash,
    hmac_key,
    verify_chain,
)
from dpgov.ledger.chain import sign as sign_hash
from dpgov.policy.schema import Budget

metadata = sa.MetaData()

entries_t = sa.Table(
    "dpgov_entries",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("time", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("signature", sa.String(64), nullable=True),
)
blocks_t = sa.Table(
    "dpgov_blocks",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("block", sa.String(200), primary_key=True),
    sa.Column("patients", sa.Integer, nullable=False),
    sa.Column("data_version", sa.String(200), nullable=True),
    sa.Column("retired", sa.Boolean, nullable=False, default=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)
reservations_t = sa.Table(
    "dpgov_reservations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending|committed|released|aborted
    sa.Column("mechanism", sa.Text, nullable=False),  # what is charged now
    sa.Column("planned_steps", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(200), nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("closed_seq", sa.BigInteger, nullable=True),
)
charges_t = sa.Table(
    "dpgov_charges",
    metadata,
    sa.Column("reservation_id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("block", sa.String(200), primary_key=True),
    sa.Index("dpgov_charges_block", "dataset", "block"),
)
cache_t = sa.Table(
    "dpgov_composition_cache",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("block", sa.String(200), primary_key=True),
    sa.Column("accountant", sa.String(64), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("multiset", sa.Text, nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
)

LEDGER_KINDS = {"block_added", "block_retired", "reservation", "commit", "release", "abort"}
_PG_LOCK_KEY = 0x6470676F76  # "dpgov"
ACTIVE = ("pending", "committed", "aborted")  # statuses whose mechanism counts as spent


@dataclass(frozen=True)
class BlockInfo:
    dataset: str
    block: str
    patients: int
    data_version: str | None
    retired: bool


@dataclass(frozen=True)
class BlockStatus:
    dataset: str
    block: str
    patients: int
    retired: bool
    epsilon_spent: float
    epsilon_limit: float
    delta: float
    accountant: str
    charges: int
    pending: int

    @property
    def remaining(self) -> float:
        return max(0.0, self.epsilon_limit - self.epsilon_spent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "block": self.block,
            "patients": self.patients,
            "retired": self.retired,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_limit": self.epsilon_limit,
            "remaining": self.remaining,
            "delta": self.delta,
            "accountant": self.accountant,
            "charges": self.charges,
            "pending": self.pending,
        }


@dataclass(frozen=True)
class Reservation:
    id: str
    seq: int
    dataset: str
    blocks: list[str]
    mechanism: DpSgdMechanism
    epsilon_run: float
    epsilon_after: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation": self.id,
            "seq": self.seq,
            "dataset": self.dataset,
            "blocks": self.blocks,
            "mechanism": self.mechanism.to_dict(),
            "epsilon_run": self.epsilon_run,
            "epsilon_after": self.epsilon_after,
        }


@dataclass(frozen=True)
class ReservationInfo:
    id: str
    dataset: str
    blocks: list[str]
    status: str
    mechanism: DpSgdMechanism
    planned_steps: int
    run_id: str | None
    seq: int


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _digest(multiset: list[tuple[DpSgdMechanism, int]]) -> str:
    return hashlib.sha256(canonical([[m.to_dict(), n] for m, n in multiset]).encode()).hexdigest()


def _accountant_key(acc: Any) -> str:
    return f"{acc.name}:{getattr(acc, 'discretization', '')}"


def _normalise_url(url: str) -> sa.URL:
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


class Ledger:
    """The privacy ledger. Open with :meth:`open`; every method is safe across processes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._accountants: dict[str, Any] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, url: str | None = None) -> Ledger:
        """Open (and create on first use) the ledger at ``url`` (default from config)."""
        from dpgov import config

        parsed = _normalise_url(url or config.ledger_url())
        shown = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "sqlite":
            from pathlib import Path

            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                parsed, connect_args={"timeout": 120}, poolclass=sa.pool.NullPool
            )
            _configure_sqlite(engine)
        else:
            try:
                engine = sa.create_engine(
                    parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10}
                )
            except ImportError as err:
                raise UsageError(
                    f"ledger URL {shown!r} needs the PostgreSQL driver: "
                    f"pip install 'dpgov[postgres]'"
                ) from err
        ledger = cls(engine)
        try:
            ledger._create_schema()
        except sa.exc.OperationalError as err:
            reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
            raise LedgerUnavailable(f"ledger database {shown} does not answer: {reason}") from err
        return ledger

    def close(self) -> None:
        self.engine.dispose()

    def _create_schema(self) -> None:
        with self._write() as conn:
            metadata.create_all(conn, checkfirst=True)
            if self.dialect == "sqlite":
                for op in ("UPDATE", "DELETE"):
                    conn.exec_driver_sql(
                        f"CREATE TRIGGER IF NOT EXISTS dpgov_entries_no_{op.lower()} BEFORE {op} "
                        f"ON dpgov_entries BEGIN SELECT RAISE(ABORT, "
                        f"'dpgov ledger entries are append-only'); END"
                    )
            else:
                exists = conn.exec_driver_sql(
                    "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE t.tgname = 'dpgov_entries_append_only' "
                    "AND c.oid = 'dpgov_entries'::regclass"
                ).first()
                if not exists:  # (no DDL once set up: a read-only role can open the ledger)
                    conn.exec_driver_sql(
                        "CREATE OR REPLACE FUNCTION dpgov_entries_append_only() RETURNS trigger "
                        "AS $$ BEGIN RAISE EXCEPTION 'dpgov ledger entries are append-only'; "
                        "END; $$ LANGUAGE plpgsql"
                    )
                    conn.exec_driver_sql(
                        "CREATE TRIGGER dpgov_entries_append_only BEFORE UPDATE OR DELETE "
                        "ON dpgov_entries FOR EACH ROW EXECUTE FUNCTION dpgov_entries_append_only()"
                    )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction holding the ledger's global write lock."""
        with (
            self._answering(),
            self.engine.connect().execution_options(dpgov_write=True) as conn,
            conn.begin(),
        ):
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._answering(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """A database that stops answering (refused, reset, locked past the timeout) is
        :class:`LedgerUnavailable` (exit 2), not a traceback; its transaction was rolled back."""
        try:
            yield
        except sa.exc.ProgrammingError as err:
            if getattr(err.orig, "sqlstate", None) != "42501":  # insufficient_privilege
                raise
            shown = self.engine.url.render_as_string(hide_password=True)
            reason = str(err.orig).strip().splitlines()[0]
            raise Refused(
                f"ledger database {shown} refused this operation ({reason}): this database "
                f"role may not write the ledger"
            ) from err
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as err:
            shown = self.engine.url.render_as_string(hide_password=True)
            reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
            raise LedgerUnavailable(
                f"ledger database {shown} does not answer: {reason}; nothing was recorded by "
                f"this operation unless `dpgov ledger show` lists it"
            ) from err

    def _acc(self, name: str) -> Any:
        if name not in self._accountants:
            self._accountants[name] = get_accountant(name)
        return self._accountants[name]

    # ------------------------------------------------------------------ appending
    def _append(
        self, conn: Connection, kind: str, payload: dict[str, Any], actor: str | None
    ) -> Entry:
        from dpgov import config

        who = actor or config.actor()
        last = conn.execute(
            sa.select(entries_t.c.seq, entries_t.c.hash).order_by(entries_t.c.seq.desc()).limit(1)
        ).first()
        seq = (last.seq + 1) if last else 1
        prev = last.hash if last else GENESIS
        time = _now()
        try:
            canonical(payload)
        except (TypeError, ValueError) as err:
            raise UsageError(f"ledger entry payload is not JSON-serialisable: {err}") from err
        payload = json.loads(canonical(payload))  # what is stored is exactly what is hashed
        digest = entry_hash(
            seq=seq, kind=kind, payload=payload, time=time, actor=who, prev_hash=prev
        )
        signature = sign_hash(digest, hmac_key())
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

    def append(self, *, kind: str, payload: dict[str, Any], actor: str | None = None) -> Entry:
        """Append a record that changes no budget (gate decisions, approvals, promotions...)."""
        if kind in LEDGER_KINDS:
            raise UsageError(f"entry kind {kind!r} is written only by its own ledger operation")
        if not kind or not kind.replace("_", "").isalnum() or len(kind) > 64:
            raise UsageError(f"entry kind must be a short identifier, found {kind!r}")
        with self._write() as conn:
            return self._append(conn, kind, payload, actor)

    # ------------------------------------------------------------------ reading
    def entries(self, kind: str | None = None, *, since_seq: int = 0) -> list[Entry]:
        query = sa.select(entries_t).where(entries_t.c.seq > since_seq).order_by(entries_t.c.seq)
        if kind is not None:
            query = query.where(entries_t.c.kind == kind)
        with self._read() as conn:
            rows = conn.execute(query).all()
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
            for r in rows
        ]

    def head(self) -> tuple[int, str]:
        """(sequence, hash) of the newest entry; (0, genesis) for an empty ledger."""
        with self._read() as conn:
            last = conn.execute(
                sa.select(entries_t.c.seq, entries_t.c.hash)
                .order_by(entries_t.c.seq.desc())
                .limit(1)
            ).first()
        return (last.seq, last.hash) if last else (0, GENESIS)

    def verify(self) -> Verification:
        """Walk the whole chain; name the first entry that was edited, deleted, inserted or
        reordered."""
        cols = entries_t.c
        with self._read() as conn:
            rows = conn.execute(
                sa.select(
                    cols.seq,
                    cols.kind,
                    cols.payload,
                    cols.time,
                    cols.actor,
                    cols.prev_hash,
                    cols.hash,
                    cols.signature,
                ).order_by(cols.seq)
            ).all()
        return verify_chain((tuple(r) for r in rows), hmac_key())  # type: ignore[misc]

    def datasets(self) -> list[str]:
        with self._read() as conn:
            return list(
                conn.execute(
                    sa.select(blocks_t.c.dataset).distinct().order_by(blocks_t.c.dataset)
                ).scalars()
            )

    def blocks(self, dataset: str | None = None) -> list[BlockInfo]:
        query = sa.select(blocks_t).order_by(blocks_t.c.dataset, blocks_t.c.block)
        if dataset is not None:
            query = query.where(blocks_t.c.dataset == dataset)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            BlockInfo(r.dataset, r.block, r.patients, r.data_version, bool(r.retired)) for r in rows
        ]

    def reservation(self, reservation_id: str) -> ReservationInfo:
        with self._read() as conn:
            return self._reservation(conn, reservation_id)

    def reservations(self, status: str | None = None) -> list[ReservationInfo]:
        query = sa.select(reservations_t.c.id).order_by(reservations_t.c.seq)
        if status is not None:
            query = query.where(reservations_t.c.status == status)
        with self._read() as conn:
            return [self._reservation(conn, rid) for rid in conn.execute(query).scalars()]

    def _reservation(self, conn: Connection, reservation_id: str) -> ReservationInfo:
        row = conn.execute(
            sa.select(reservations_t).where(reservations_t.c.id == reservation_id)
        ).first()
        if row is None:
            raise UsageError(f"unknown reservation {reservation_id!r}")
        blocks = list(
            conn.execute(
                sa.select(charges_t.c.block)
                .where(charges_t.c.reservation_id == reservation_id)
                .order_by(charges_t.c.block)
            ).scalars()
        )
        return ReservationInfo(
            id=row.id,
            dataset=row.dataset,
            blocks=blocks,
            status=row.status,
            mechanism=mechanism_from_dict(json.loads(row.mechanism)),
            planned_steps=row.planned_steps,
            run_id=row.run_id,
            seq=row.seq,
        )

    def _block_row(self, conn: Connection, dataset: str, block: str) -> Any:
        row = conn.execute(
            sa.select(blocks_t).where(blocks_t.c.dataset == dataset, blocks_t.c.block == block)
        ).first()
        if row is None:
            known = conn.execute(
                sa.select(blocks_t.c.dataset).where(blocks_t.c.dataset == dataset).limit(1)
            ).first()
            if known is None:
                raise UsageError(
                    f"unknown dataset {dataset!r}: register its blocks first "
                    f"(dpgov data prepare, or dpgov ledger add-block)"
                )
            raise UsageError(f"unknown block {block!r} in dataset {dataset!r}")
        return row

    def _multiset(
        self, conn: Connection, dataset: str, block: str
    ) -> tuple[list[tuple[DpSgdMechanism, int]], int, int]:
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

    # ------------------------------------------------------------------ composition
    def _state(
        self,
        conn: Connection,
        dataset: str,
        block: str,
        acc: Any,
        multiset: list[tuple[DpSgdMechanism, int]],
    ) -> tuple[Any, bool]:
        """The composed state of ``multiset`` for a block, from the cache when it matches,
        extended incrementally when the cache holds a sub-multiset, else recomposed.
        Returns (state, cache_is_current)."""
        digest = _digest(multiset)
        row = conn.execute(
            sa.select(cache_t).where(
                cache_t.c.dataset == dataset,
                cache_t.c.block == block,
                cache_t.c.accountant == _accountant_key(acc),
            )
        ).first()
        if row is not None:
            try:
                cached_state = acc.loads(row.state)
            except Exception:  # a damaged cache is recomputed, never trusted
                cached_state = None
            if cached_state is not None and row.digest == digest:
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

    def _store_state(
        self,
        conn: Connection,
        dataset: str,
        block: str,
        acc: Any,
        multiset: list[tuple[DpSgdMechanism, int]],
        state: Any,
    ) -> None:
        key = _accountant_key(acc)
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
                digest=_digest(multiset),
                multiset=canonical([[m.to_dict(), n] for m, n in multiset]),
                state=acc.dumps(state),
            )
        )

    def _epsilon(self, acc: Any, state: Any, delta: float) -> float:
        try:
            return acc.epsilon(state, delta)
        except AccountantFailed as err:
            raise Refused(str(err)) from err

    def block_status(self, dataset: str, block: str, budget: Budget) -> BlockStatus:
        """A block's spent ε at the policy's δ: the composition of every active charge."""
        return self.budget(budget, dataset=dataset, blocks=[block])[0]

    def budget(
        self, budget: Budget, dataset: str | None = None, blocks: Sequence[str] | None = None
    ) -> list[BlockStatus]:
        """Status of every block (of one dataset, or the named blocks of it)."""
        acc = self._acc(budget.accountant)
        with self._read() as conn:
            if blocks is not None:
                if dataset is None:
                    raise UsageError("naming blocks needs a dataset")
                rows: list[Any] = [self._block_row(conn, dataset, b) for b in blocks]
            else:
                if dataset is not None:
                    self._check_dataset(conn, dataset)
                query = sa.select(blocks_t).order_by(blocks_t.c.dataset, blocks_t.c.block)
                if dataset is not None:
                    query = query.where(blocks_t.c.dataset == dataset)
                rows = list(conn.execute(query).all())
            out, stale = [], []
            for row in rows:
                multiset, n_charges, pending = self._multiset(conn, row.dataset, row.block)
                state, current = self._state(conn, row.dataset, row.block, acc, multiset)
                if not current and multiset:
                    stale.append((row.dataset, row.block, multiset, state))
                spent = self._epsilon(acc, state, budget.delta) if multiset else 0.0
                out.append(
                    BlockStatus(
                        dataset=row.dataset,
                        block=row.block,
                        patients=row.patients,
                        retired=bool(row.retired),
                        epsilon_spent=spent,
                        epsilon_limit=budget.epsilon_per_block,
                        delta=budget.delta,
                        accountant=budget.accountant,
                        charges=n_charges,
                        pending=pending,
                    )
                )
        if stale:  # remember what we composed, for the next reader (a read-only role cannot)
            with contextlib.suppress(Refused), self._write() as conn:
                for ds, blk, multiset, state in stale:
                    now, _, _ = self._multiset(conn, ds, blk)
                    if now == multiset:
                        self._store_state(conn, ds, blk, acc, multiset, state)
        return out

    def _check_dataset(self, conn: Connection, dataset: str) -> None:
        if (
            conn.execute(
                sa.select(blocks_t.c.dataset).where(blocks_t.c.dataset == dataset).limit(1)
            ).first()
            is None
        ):
            raise UsageError(f"unknown dataset {dataset!r}")

    # ------------------------------------------------------------------ blocks
    def add_block(
        self,
        *,
        dataset: str,
        block: str,
        patients: int,
        data_version: str | None = None,
        actor: str | None = None,
    ) -> Entry | None:
        """Register a block of patients. Idempotent for identical facts (returns None);
        a block cannot be registered again with a different number of patients."""
        for name, value in (("dataset", dataset), ("block", block)):
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                raise UsageError(
                    f"{name} must be a non-empty name of at most 200 characters, found {value!r}"
                )
        if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
            raise UsageError(f"patients must be a positive integer, found {patients!r}")
        with self._write() as conn:
            row = conn.execute(
                sa.select(blocks_t).where(blocks_t.c.dataset == dataset, blocks_t.c.block == block)
            ).first()
            if row is not None:
                if row.patients != patients:
                    raise UsageError(
                        f"block {block!r} of dataset {dataset!r} is registered with "
                        f"{row.patients} patients, not {patients}: new patients arrive as a "
                        f"new block"
                    )
                return None
            entry = self._append(
                conn,
                "block_added",
                {
                    "dataset": dataset,
                    "block": block,
                    "patients": patients,
                    "data_version": data_version,
                },
                actor,
            )
            conn.execute(
                blocks_t.insert().values(
                    dataset=dataset,
                    block=block,
                    patients=patients,
                    data_version=data_version,
                    retired=False,
                    seq=entry.seq,
                )
            )
            return entry

    def retire_block(
        self, *, dataset: str, block: str, reason: str, actor: str | None = None
    ) -> Entry:
        """Retire a block from training (its budget is spent, or its data withdrawn)."""
        with self._write() as conn:
            row = self._block_row(conn, dataset, block)
            if row.retired:
                raise UsageError(f"block {block!r} of dataset {dataset!r} is already retired")
            entry = self._append(
                conn, "block_retired", {"dataset": dataset, "block": block, "reason": reason}, actor
            )
            conn.execute(
                blocks_t.update()
                .where(blocks_t.c.dataset == dataset, blocks_t.c.block == block)
                .values(retired=True)
            )
            return entry

    # ------------------------------------------------------------------ planning
    def calibrate(
        self,
        *,
        dataset: str,
        blocks: Sequence[str],
        target_epsilon: float,
        sample_rate: float,
        steps: int,
        budget: Budget,
    ) -> float:
        """Smallest σ such that the run's own ε stays within ``target_epsilon`` and every
        block's composed ε (its charges and this run) stays within the block limit."""
        acc = self._acc(budget.accountant)
        blocks = self._check_blocks(dataset, blocks)
        with self._read() as conn:
            for b in blocks:
                self._block_row(conn, dataset, b)
            states = [
                self._state(conn, dataset, b, acc, self._multiset(conn, dataset, b)[0])[0]
                for b in blocks
            ]
        priors = [acc.empty(), *states]
        targets = [target_epsilon] + [budget.epsilon_per_block] * len(states)
        try:
            return calibrate_against_states(
                target_epsilon=min(targets),
                delta=budget.delta,
                sample_rate=sample_rate,
                steps=steps,
                priors=priors,
                accountant=budget.accountant,
                targets=targets,
            )
        except InfeasibleBudget as err:
            raise Refused(f"dataset {dataset!r}, blocks {', '.join(blocks)}: {err}") from err

    @staticmethod
    def _check_blocks(dataset: str, blocks: Sequence[str]) -> list[str]:
        names = list(dict.fromkeys(blocks))
        if not names:
            raise UsageError("a reservation needs at least one block")
        if len(names) != len(list(blocks)):
            raise UsageError(f"block named twice in {list(blocks)!r}")
        return names

    # ------------------------------------------------------------------ reservations
    def reserve(
        self,
        *,
        dataset: str,
        blocks: Sequence[str],
        mechanism: DpSgdMechanism,
        budget: Budget,
        policy_sha256: str | None = None,
        run_id: str | None = None,
        data_version: str | None = None,
        actor: str | None = None,
        max_run_epsilon: float | None = None,
    ) -> Reservation:
        """Atomically check that every block can afford ``mechanism`` and charge it to all.

        Raises :class:`BudgetExceeded` (nothing written) when a block would pass its limit.
        """
        if not isinstance(mechanism, DpSgdMechanism):
            raise UsageError(f"mechanism must be a DpSgdMechanism, found {mechanism!r}")
        blocks = self._check_blocks(dataset, blocks)
        acc = self._acc(budget.accountant)
        run_eps = self._epsilon(acc, acc.add(acc.empty(), mechanism), budget.delta)
        if max_run_epsilon is not None and run_eps > max_run_epsilon:
            raise Refused(
                f"this run alone costs ε={run_eps:.4f}, over the per-run limit {max_run_epsilon:g}"
            )

        def candidates(conn: Connection) -> dict[str, tuple[Any, Any, Any]]:
            out = {}
            for b in blocks:
                self._block_row(conn, dataset, b)
                multiset, _, _ = self._multiset(conn, dataset, b)
                state, _ = self._state(conn, dataset, b, acc, multiset)
                after = group([m for m, n in multiset for _ in range(n)] + [mechanism])
                out[b] = (multiset, state, after)
            return out

        # Compose outside the lock (slow), then re-check under the lock (fast).
        with self._read() as conn:
            for b in blocks:
                row = self._block_row(conn, dataset, b)
                if row.retired:
                    raise Refused(f"block {b!r} of dataset {dataset!r} is retired")
            planned = candidates(conn)
            after_states = {b: acc.add(state, mechanism) for b, (_, state, _) in planned.items()}

        rid = str(uuid.uuid4())
        with self._write() as conn:
            for b in blocks:
                row = self._block_row(conn, dataset, b)
                if row.retired:
                    raise Refused(f"block {b!r} of dataset {dataset!r} is retired")
                multiset, _, _ = self._multiset(conn, dataset, b)
                if multiset != planned[b][0]:  # someone charged this block meanwhile
                    state, _ = self._state(conn, dataset, b, acc, multiset)
                    after = group([m for m, n in multiset for _ in range(n)] + [mechanism])
                    planned[b] = (multiset, state, after)
                    after_states[b] = acc.add(state, mechanism)
            eps_after: dict[str, float] = {}
            for b in blocks:
                eps_after[b] = self._epsilon(acc, after_states[b], budget.delta)
                if eps_after[b] > budget.epsilon_per_block:
                    multiset, state, _ = planned[b]
                    spent = self._epsilon(acc, state, budget.delta) if multiset else 0.0
                    raise BudgetExceeded(
                        dataset=dataset,
                        block=b,
                        requested=run_eps,
                        spent=spent,
                        limit=budget.epsilon_per_block,
                        after=eps_after[b],
                    )
            entry = self._append(
                conn,
                "reservation",
                {
                    "reservation": rid,
                    "dataset": dataset,
                    "blocks": blocks,
                    "mechanism": mechanism.to_dict(),
                    "run_id": run_id,
                    "data_version": data_version,
                    "policy_sha256": policy_sha256,
                    "budget": budget.model_dump(),
                    "epsilon_run": run_eps,
                    "epsilon_after": eps_after,
                },
                actor,
            )
            conn.execute(
                reservations_t.insert().values(
                    id=rid,
                    dataset=dataset,
                    status="pending",
                    mechanism=canonical(mechanism.to_dict()),
                    planned_steps=mechanism.steps,
                    run_id=run_id,
                    seq=entry.seq,
                )
            )
            for b in blocks:
                conn.execute(
                    charges_t.insert().values(reservation_id=rid, dataset=dataset, block=b)
                )
                self._store_state(conn, dataset, b, acc, planned[b][2], after_states[b])
        return Reservation(
            id=rid,
            seq=entry.seq,
            dataset=dataset,
            blocks=blocks,
            mechanism=mechanism,
            epsilon_run=run_eps,
            epsilon_after=eps_after,
        )

    def _close(
        self,
        reservation_id: str,
        kind: str,
        status: str,
        payload: dict[str, Any],
        actor: str | None,
        mechanism: DpSgdMechanism | None = None,
    ) -> Entry:
        with self._write() as conn:
            info = self._reservation(conn, reservation_id)
            if info.status != "pending":
                raise UsageError(
                    f"reservation {reservation_id} is {info.status}, not pending: "
                    f"it cannot be {status} again"
                )
            entry = self._append(conn, kind, {"reservation": reservation_id, **payload}, actor)
            values: dict[str, Any] = {"status": status, "closed_seq": entry.seq}
            if mechanism is not None:
                values["mechanism"] = canonical(mechanism.to_dict())
            conn.execute(
                reservations_t.update()
                .where(reservations_t.c.id == reservation_id)
                .values(**values)
            )
            return entry

    def commit(
        self,
        reservation_id: str,
        *,
        steps: int | None = None,
        run_id: str | None = None,
        actor: str | None = None,
    ) -> Entry:
        """Replace the planned mechanism with the one actually run (``steps`` taken, default
        all). Never more than reserved: a run that took more steps must not commit less."""
        info = self.reservation(reservation_id)
        taken = info.planned_steps if steps is None else steps
        if isinstance(taken, bool) or not isinstance(taken, int) or taken < 1:
            raise UsageError(
                f"steps must be an integer >= 1 (release a reservation where no "
                f"step ran), found {steps!r}"
            )
        if taken > info.planned_steps:
            raise UsageError(
                f"steps {taken} exceed the {info.planned_steps} reserved by "
                f"{reservation_id}: reserve again for more"
            )
        actual = info.mechanism.with_steps(taken)
        return self._close(
            reservation_id,
            "commit",
            "committed",
            {"steps": taken, "mechanism": actual.to_dict(), "run_id": run_id or info.run_id},
            actor,
            mechanism=actual,
        )

    def release(
        self, reservation_id: str, *, reason: str = "no step ran", actor: str | None = None
    ) -> Entry:
        """Return a reservation's budget. Only for runs in which no training step ran."""
        return self._close(reservation_id, "release", "released", {"reason": reason}, actor)

    def abort(self, reservation_id: str, *, reason: str, actor: str | None = None) -> Entry:
        """Mark a crashed run: its planned mechanism stays charged (conservative)."""
        return self._close(reservation_id, "abort", "aborted", {"reason": reason}, actor)


def _configure_sqlite(engine: Engine) -> None:
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
