"""The privacy ledger: an append-only, hash-chained record in a SQL database (SQLAlchemy).

State:
- ``entries`` is the ledger itself: append-only, hash-chained, one global order. Every state
  change is an entry (the tables: :mod:`dpgov.ledger.schema`; the chain:
  :mod:`dpgov.ledger.chain`).
- Every figure this store hands out or decides on — blocks, retirements, reservations, their
  status and mechanism, each block's charges — is the state rebuilt from the chained entries,
  their hashes checked as they are read (:mod:`dpgov.ledger.verified`).
- ``blocks``, ``reservations``, ``charges`` are projections of the entries, written in the same
  transaction as the entry that changes them, for SQL readers. Nothing here trusts them: the
  write operations refuse while the tables of their dataset disagree with the entries
  (:mod:`dpgov.ledger.integrity`), and :meth:`LedgerStore.verify` names the first row that does.
- The composition cache holds each block's composed accountant state; a state is used only
  when a seal in the chain vouches for it (:mod:`dpgov.ledger.composition`).

Concurrency: every write takes one global lock (:mod:`dpgov.ledger.database`), which the hash
chain needs anyway; reads (budgets, verification, the audit) never take it.

The reservation protocol (reserve → commit | release | abort) is :mod:`dpgov.ledger.reservations`,
whose :class:`~dpgov.ledger.Ledger` extends this store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpgov import config, names
from dpgov.accounting import AccountantFailed, get_accountant
from dpgov.errors import LedgerUnavailable, Refused, UsageError
from dpgov.ledger import integrity, membership, snapshot
from dpgov.ledger.anchoring import publish
from dpgov.ledger.appending import append_entry, take_appended
from dpgov.ledger.chain import Entry, Verification, hmac_key, verify_chain
from dpgov.ledger.composition import accountant_key, composed_state
from dpgov.ledger.database import (
    create_engine,
    is_lock_error,
    normalise_url,
    read_transaction,
    shown,
    write_transaction,
)
from dpgov.ledger.integrity import Disagreement, Integrity
from dpgov.ledger.members_state import VMembership
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
from dpgov.ledger.verified import (
    STATE_KINDS,
    LedgerInconsistent,
    VBlock,
    VerifiedState,
    refresh,
    replay_rows,
)
from dpgov.policy.schema import Budget


def _absent_sqlite_file(parsed: sa.URL) -> Path | None:
    """The SQLite file ``parsed`` names when it does not exist yet (opening creates it)."""
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(str(parsed.database))
    return None if path.exists() else path


class LedgerStore:
    """The ledger's store: opening, appending records, reading, blocks and their budget.
    :class:`dpgov.ledger.Ledger` adds the reservation protocol."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._accountants: dict[str, Any] = {}
        self._verified: VerifiedState | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, url: str | None = None) -> Self:
        """Open (and create on first use) the ledger at ``url`` (default from config)."""
        parsed = normalise_url(url or config.ledger_url())
        new_file = _absent_sqlite_file(parsed)
        ledger = cls(create_engine(parsed))
        try:
            ledger._ensure_schema()
        except sa.exc.OperationalError as err:
            reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
            raise LedgerUnavailable(
                f"ledger database {shown(parsed)} does not answer: {reason}"
            ) from err
        if new_file is not None:  # a command run in the wrong folder must not pass unnoticed
            config.created_ledgers.append(new_file)
        return ledger

    def _ensure_schema(self) -> None:
        """Create what is missing. A ledger already set up is opened in a plain read
        transaction (``create_schema`` then changes nothing), so opening never waits for the
        write lock; only a first open, or one racing another's, creates under the lock."""
        try:
            with self.engine.connect() as conn, conn.begin():
                create_schema(conn, self.dialect)
            return
        except sa.exc.OperationalError as err:
            if not is_lock_error(err):
                raise
        except (sa.exc.ProgrammingError, sa.exc.IntegrityError):
            pass  # created concurrently, or a role that may not: decided under the lock
        with self._write() as conn:
            create_schema(conn, self.dialect)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction holding the ledger's global write lock; once it has committed, the
        new head is anchored (:func:`dpgov.ledger.anchoring.publish`)."""
        with write_transaction(self.engine) as conn:
            yield conn
            appended = take_appended(conn)
        publish(self.engine, appended)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with read_transaction(self.engine) as conn:
            yield conn

    def _acc(self, name: str) -> Any:
        if name not in self._accountants:
            self._accountants[name] = get_accountant(name)
        return self._accountants[name]

    def _state(self, conn: Connection) -> VerifiedState:
        """The state the entries say, verified (only entries new since the last call are
        read and checked)."""
        state = refresh(conn, self._verified)
        self._verified = state
        return state

    # ------------------------------------------------------------------ appending
    def append(self, *, kind: str, payload: dict[str, Any], actor: str | None = None) -> Entry:
        """Append a record that changes no budget (gate decisions, approvals, promotions...)."""
        if kind in LEDGER_KINDS or kind in STATE_KINDS:
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

    def verify_all(self) -> tuple[Verification, Integrity]:
        """The chain (:func:`verify_chain`) and the tables against the entries
        (:func:`dpgov.ledger.integrity.check`), over one read of the ledger."""
        with self._read() as conn:
            rows = snapshot.entry_rows(conn)
            chain = verify_chain(iter(rows), hmac_key())  # type: ignore[arg-type]
            try:
                st = replay_rows(rows)
            except LedgerInconsistent as err:
                return chain, Integrity(error=str(err), error_seq=err.seq)
            return chain, integrity.check(conn, st)

    def verify(self) -> Verification:
        """Walk the whole chain; name the first entry that was edited, deleted, inserted or
        reordered. The tables are checked by :meth:`verify_all` (``dpgov ledger verify``
        does both, and :func:`dpgov.ledger.integrity.combine` makes one verdict of them)."""
        with self._read() as conn:
            rows = snapshot.entry_rows(conn)
        return verify_chain(iter(rows), hmac_key())  # type: ignore[arg-type]

    def disagreements(self, dataset: str | None = None) -> list[Disagreement]:
        """The projection rows (of one dataset, or all) that disagree with the entries."""
        with self._read() as conn:
            return integrity.projection_disagreements(conn, self._state(conn), dataset)

    def datasets(self) -> list[str]:
        with self._read() as conn:
            return self._state(conn).datasets()

    def blocks(self, dataset: str | None = None) -> list[BlockInfo]:
        with self._read() as conn:
            return [
                BlockInfo(b.dataset, b.block, b.patients, b.data_version, b.retired)
                for b in self._state(conn).blocks_of(dataset)
            ]

    def reservation(self, reservation_id: str) -> ReservationInfo:
        with self._read() as conn:
            return self._info(self._state(conn), reservation_id)

    def reservations(self, status: str | None = None) -> list[ReservationInfo]:
        with self._read() as conn:
            st = self._state(conn)
        return [
            self._info(st, rid)
            for rid, r in st.reservations.items()
            if status is None or r.status == status
        ]

    @staticmethod
    def _info(st: VerifiedState, reservation_id: str) -> ReservationInfo:
        r = st.reservation(reservation_id)
        return ReservationInfo(
            id=r.id,
            dataset=r.dataset,
            blocks=sorted(r.blocks),
            status=r.status,
            mechanism=r.mechanism,
            planned_steps=r.planned_steps,
            run_id=r.run_id,
            seq=r.seq,
        )

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
        """Status of every block (of one dataset, or the named blocks of it), composed from the
        charges the entries record. Reads only: a state composed here is not cached (the
        write operations cache and seal what they compose)."""
        acc = self._acc(budget.accountant)
        key = accountant_key(acc)
        with self._read() as conn:
            st = self._state(conn)
            if blocks is not None:
                if dataset is None:
                    raise UsageError("naming blocks needs a dataset")
                rows = [st.block(dataset, b) for b in blocks]
            else:
                if dataset is not None:
                    st.check_dataset(dataset)
                rows = st.blocks_of(dataset)
            out = []
            for row in rows:
                multiset, n_charges, pending = st.multiset(row.dataset, row.block)
                spent = 0.0
                if multiset:
                    seal = st.seal(row.dataset, row.block, key)
                    state, _ = composed_state(conn, row.dataset, row.block, acc, multiset, seal)
                    spent = self._epsilon(acc, state, budget.delta)
                out.append(
                    BlockStatus(
                        dataset=row.dataset,
                        block=row.block,
                        patients=row.patients,
                        retired=row.retired,
                        epsilon_spent=spent,
                        epsilon_limit=budget.epsilon_per_block,
                        delta=budget.delta,
                        accountant=budget.accountant,
                        charges=n_charges,
                        pending=pending,
                    )
                )
        return out

    # ------------------------------------------------------------------ blocks
    def add_block(
        self,
        *,
        dataset: str,
        block: str,
        patients: int,
        data_version: str | None = None,
        actor: str | None = None,
        members: Sequence[str] | None = None,
        domain: str | None = None,
        split: str = "train",
    ) -> Entry | None:
        """Register a block of patients. Idempotent for identical facts (returns None);
        a block cannot be registered again with a different number of patients.

        ``members`` are the block's pseudonyms (their distinct count must be ``patients``):
        stored beside the chain, their digest on it (:mod:`dpgov.ledger.membership`).
        ``domain`` is the pseudonyms' domain (default: the dataset), ``split`` the block's use.
        Without members the block is conservative (it reaches every patient of its domain)
        until :meth:`attach_members`. Called again with neither members nor domain (a run
        registering its blocks, idempotent), only the number of patients is compared."""
        names.storable(
            dataset=dataset, block=block, patients=patients, data_version=data_version, actor=actor
        )
        facts = members is not None or domain is not None  # a bare call: counts only
        domain = dataset if domain is None else domain
        names.name(domain, argument="domain")
        names.name(split, argument="split", max_length=64)
        blob = None if members is None else membership.pack(members)
        if blob is not None and membership.count(blob) != patients:
            raise UsageError(
                f"block {block!r} of dataset {dataset!r}: {membership.count(blob)} distinct "
                f"members, not the {patients} patients it is registered with"
            )
        for name, value in (("dataset", dataset), ("block", block)):
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                raise UsageError(
                    f"{name} must be a non-empty name of at most 200 characters, found {value!r}"
                )
        if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
            raise UsageError(f"patients must be a positive integer, found {patients!r}")
        with self._write() as conn:
            st = self._state(conn)
            integrity.guard(conn, st, dataset, [block])
            known = st.blocks.get((dataset, block))
            if known is not None:
                if known.patients != patients:
                    raise UsageError(
                        f"block {block!r} of dataset {dataset!r} is registered with "
                        f"{known.patients} patients, not {patients}: new patients arrive as a "
                        f"new block"
                    )
                if facts:
                    m = st.members.of((dataset, block))
                    self._same_members(known, m, blob, domain, split)
                return None
            entry = append_entry(
                conn,
                "block_added",
                {
                    "dataset": dataset,
                    "block": block,
                    "patients": patients,
                    "data_version": data_version,
                    "domain": domain,
                    "split": split,
                    "members_digest": None if blob is None else membership.digest(blob),
                },
                actor,
            )
            if blob is not None:
                membership.write(conn, (dataset, block), domain, blob)
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

    @staticmethod
    def _same_members(
        known: VBlock, m: VMembership, blob: bytes | None, domain: str, split: str
    ) -> None:
        """A block registered again: refused unless its facts are the registered ones."""
        where = f"block {known.block!r} of dataset {known.dataset!r}"
        if blob is not None and m.digest is None:
            raise UsageError(
                f"{where} is registered without members: attach them (dpgov ledger "
                f"attach-members, Ledger.attach_members) rather than registering it again"
            )
        if m.domain != domain or m.split != split:
            raise UsageError(
                f"{where} is registered in domain {m.domain!r} as {m.split!r}, not in domain "
                f"{domain!r} as {split!r}"
            )
        if blob is None:
            return
        if membership.digest(blob) != m.digest:
            raise UsageError(
                f"{where} is registered with other members (digest {str(m.digest)[:12]}…, entry "
                f"{m.seq}): new patients arrive as a new block"
            )

    def retire_block(
        self, *, dataset: str, block: str, reason: str, actor: str | None = None
    ) -> Entry:
        """Retire a block from training (its budget is spent, or its data withdrawn)."""
        names.storable(dataset=dataset, block=block, actor=actor)
        with self._write() as conn:
            st = self._state(conn)
            known = st.block(dataset, block)
            integrity.guard(conn, st, dataset, [block])
            if known.retired:
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
