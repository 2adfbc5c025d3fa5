"""The privacy ledger: an append-only, hash-chained record in a SQL database (SQLAlchemy).

State:
- ``entries`` is the ledger itself: append-only, hash-chained, one global order. Every state
  change is an entry (the tables: :mod:`dpgov.ledger.schema`; the chain:
  :mod:`dpgov.ledger.chain`).
- ``blocks``, ``reservations``, ``charges`` are projections of the entries, written in the same
  transaction as the entry that changes them, so they can never disagree with a committed
  entry. The composition cache holds each block's composed accountant state
  (:mod:`dpgov.ledger.composition`); a stale or missing cache is recomputed, never trusted.

Concurrency: every write takes one global lock (:mod:`dpgov.ledger.database`), which the hash
chain needs anyway.

The reservation protocol (reserve → commit | release | abort) is :mod:`dpgov.ledger.reservations`,
whose :class:`~dpgov.ledger.Ledger` extends this store.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpgov import config
from dpgov.accounting import AccountantFailed, get_accountant, mechanism_from_dict
from dpgov.errors import LedgerUnavailable, Refused, UsageError
from dpgov.ledger import snapshot
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import Entry, Verification, hmac_key, verify_chain
from dpgov.ledger.composition import charged_multiset, composed_state, store_state
from dpgov.ledger.database import (
    create_engine,
    normalise_url,
    read_transaction,
    shown,
    write_transaction,
)
from dpgov.ledger.records import BlockInfo, BlockStatus, ReservationInfo
from dpgov.ledger.schema import (
    ACTIVE,
    LEDGER_KINDS,
    blocks_t,
    charges_t,
    create_schema,
    entries_t,
    reservations_t,
)
from dpgov.policy.schema import Budget


class LedgerStore:
    """The ledger's store: opening, appending records, reading, blocks and their budget.
    :class:`dpgov.ledger.Ledger` adds the reservation protocol."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._accountants: dict[str, Any] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, url: str | None = None) -> Self:
        """Open (and create on first use) the ledger at ``url`` (default from config)."""
        parsed = normalise_url(url or config.ledger_url())
        ledger = cls(create_engine(parsed))
        try:
            with ledger._write() as conn:
                create_schema(conn, ledger.dialect)
        except sa.exc.OperationalError as err:
            reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
            raise LedgerUnavailable(
                f"ledger database {shown(parsed)} does not answer: {reason}"
            ) from err
        return ledger

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction holding the ledger's global write lock."""
        with write_transaction(self.engine) as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with read_transaction(self.engine) as conn:
            yield conn

    def _acc(self, name: str) -> Any:
        if name not in self._accountants:
            self._accountants[name] = get_accountant(name)
        return self._accountants[name]

    # ------------------------------------------------------------------ appending
    def append(self, *, kind: str, payload: dict[str, Any], actor: str | None = None) -> Entry:
        """Append a record that changes no budget (gate decisions, approvals, promotions...)."""
        if kind in LEDGER_KINDS:
            raise UsageError(f"entry kind {kind!r} is written only by its own ledger operation")
        if not kind or not kind.replace("_", "").isalnum() or len(kind) > 64:
            raise UsageError(f"entry kind must be a short identifier, found {kind!r}")
        with self._write() as conn:
            return append_entry(conn, kind, payload, actor)

    # ------------------------------------------------------------------ reading
    def entries(self, kind: str | None = None, *, since_seq: int = 0) -> list[Entry]:
        with self._read() as conn:
            return snapshot.entries(conn, kind, since_seq=since_seq)

    def head(self) -> tuple[int, str]:
        """(sequence, hash) of the newest entry; (0, genesis) for an empty ledger."""
        with self._read() as conn:
            return snapshot.head(conn)

    def verify(self) -> Verification:
        """Walk the whole chain; name the first entry that was edited, deleted, inserted or
        reordered."""
        with self._read() as conn:
            rows = snapshot.entry_rows(conn)
        return verify_chain(iter(rows), hmac_key())  # type: ignore[arg-type]

    def datasets(self) -> list[str]:
        with self._read() as conn:
            return snapshot.datasets(conn)

    def blocks(self, dataset: str | None = None) -> list[BlockInfo]:
        with self._read() as conn:
            return snapshot.blocks(conn, dataset)

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

    # ------------------------------------------------------------------ composition
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
                rows = snapshot.block_rows(conn, dataset)
            out, stale = [], []
            for row in rows:
                multiset, n_charges, pending = charged_multiset(conn, row.dataset, row.block)
                state, current = composed_state(conn, row.dataset, row.block, acc, multiset)
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
                    now, _, _ = charged_multiset(conn, ds, blk)
                    if now == multiset:
                        store_state(conn, ds, blk, acc, multiset, state)
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
            entry = append_entry(
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
            entry = append_entry(
                conn, "block_retired", {"dataset": dataset, "block": block, "reason": reason}, actor
            )
            conn.execute(
                blocks_t.update()
                .where(blocks_t.c.dataset == dataset, blocks_t.c.block == block)
                .values(retired=True)
            )
            return entry


# ACTIVE and the tables are defined in dpgov.ledger.schema; other modules import them from here.
__all__ = [
    "ACTIVE",
    "LedgerStore",
    "blocks_t",
    "charges_t",
    "entries_t",
    "reservations_t",
]
