"""The ledger's reservation protocol, on top of its store: the :class:`Ledger`.

reserve (the planned mechanism is charged to every block) → commit (the mechanism actually run
replaces the plan; never more steps than reserved) or release (only if no step ran) or abort (a
crash: the plan stays charged). Pending reservations count as spent.

Everything decided here reads the state the chained entries say
(:mod:`dpgov.ledger.verified`): the blocks and their retirement, each block's charges, and the
reservation being closed (its dataset, blocks, status and mechanism). The tables are only
written, and a write refuses while those of its dataset disagree with the entries
(:func:`dpgov.ledger.integrity.guard`).

A reservation composes its candidate state *before* taking the global write lock, then
re-checks under the lock that the block's charges did not change meanwhile (and recomposes if
they did): the check and the charge are atomic, and the slow part runs outside the lock. A
commit of fewer steps and a release change a block's charges too: they compose the new state
outside the lock as well, so that the entry can seal it for the next reader.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov.accounting import (
    DpSgdMechanism,
    mechanism_to_dict,
)
from dpgov.errors import DpgovError, UsageError
from dpgov.ledger import classes, integrity
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import Entry, canonical
from dpgov.ledger.composition import (
    accountant_key,
    composed_state,
    digest,
    store_state,
    without,
)
from dpgov.ledger.members_state import rdp_seal
from dpgov.ledger.reserving import Reserving
from dpgov.ledger.schema import entries_t, reservations_t
from dpgov.ledger.verified import REPAIR_KIND, Multiset, Seal

# A block's charges before a close, after it, and the state composed for after.
Closing = dict[str, tuple[Multiset, Multiset, Any, Any]]
# A class's charges before a close, after it, the state composed for after and its ε at the
# reservation's δ (by class key), with the RDP seals of the multisets after the close.
ClassClosing = dict[str, tuple[Multiset, Multiset, Any, float | None]]


class Ledger(Reserving):
    """The privacy ledger. Open with :meth:`open`; every method is safe across processes."""

    def _closing(self, reservation_id: str, actual: DpSgdMechanism | None) -> Closing:
        """For a close that changes what its blocks are charged (a release: ``actual`` None; a
        commit of fewer steps), each block's charges before and after it and the state composed
        for after, outside the lock. Caching is an optimisation: an accountant that fails here
        leaves the close unsealed, never undone."""
        with self._read() as conn:
            st = self._state(conn)
            res = st.reservation(reservation_id)
            if res.status != "pending" or actual == res.planned:
                return {}
            try:
                acc = self._acc(res.accountant or "pld")
                key = accountant_key(acc)
                out: Closing = {}
                for b in res.blocks:
                    before = st.multiset(res.dataset, b)[0]
                    after = without(before, res.planned, actual)
                    seal = st.seal(res.dataset, b, key)
                    state = composed_state(conn, res.dataset, b, acc, after, seal)[0]
                    out[b] = (before, after, state, acc)
                return out
            except (DpgovError, ArithmeticError, MemoryError, RuntimeError, ValueError):
                return {}

    def _class_closing(
        self, reservation_id: str, actual: DpSgdMechanism | None
    ) -> tuple[ClassClosing, list[dict[str, Any]], float | None]:
        """For a close (``actual``: the mechanism charged after it, None when nothing stays
        charged), each reached class's charges before and after it, with the accountant's
        state composed for after and its ε at the reservation's δ where no entry records that
        ε yet, and the RDP vectors (at the reservation's orders) of the multisets after it that
        no entry records. Outside the lock; an optimisation, like :meth:`_closing`: a failure
        leaves the close unsealed, and budget reads compose what is not sealed.

        This is where the accountant's figure of a class under the adaptive rule is composed
        (:meth:`reserve` judges those by the RDP filter alone): once, for the mechanism that
        actually ran, not for the plan and again for a commit of fewer steps."""
        with self._read() as conn:
            st = self._state(conn)
            res = st.reservation(reservation_id)
            if res.status != "pending":
                return {}, [], None
            try:
                delta, orders = self._reserved_under(conn, res.seq)
                acc = self._acc(res.accountant or "pld")
                acc_key = accountant_key(acc)
                plan = self._class_plan(conn, st, res.dataset, res.blocks, acc, None)
                comp = classes.Composer(conn, st, acc)
                out: ClassClosing = {}
                rdp_seals: dict[str, dict[str, Any]] = {}
                eps: dict[str, float] = {}
                for c in plan.affected:
                    before = plan.before[c.key]
                    after = (
                        before if actual == res.planned else without(before, res.planned, actual)
                    )
                    if not after:
                        continue
                    d = digest(after)
                    if orders and (d, orders) not in st.members.rdp and d not in rdp_seals:
                        rdp_seals[d] = rdp_seal(d, orders, self._rdp_of(after, orders))
                    known = None if delta is None else st.members.epsilons.get((d, acc_key, delta))
                    seal = st.members.class_seals.get((c.key, acc_key))
                    if known is not None and seal is not None and seal[0] == d:
                        continue  # its state and ε are sealed already
                    # the class's own cache is extended even where its ε is known (another
                    # class of the same charges sealed it), so that each class's state grows
                    # one charge at a time, in the order the charges came
                    state = comp.state(c, after)[0]
                    if known is None and delta is not None and d not in eps:
                        eps[d] = self._epsilon(acc, state, delta)
                    out[c.key] = (before, after, state, eps.get(d, known))
                return out, [rdp_seals[k] for k in sorted(rdp_seals)], delta
            except (DpgovError, ArithmeticError, MemoryError, RuntimeError, ValueError):
                return {}, [], None

    @staticmethod
    def _reserved_under(
        conn: Connection, seq: int
    ) -> tuple[float | None, tuple[float, ...] | None]:
        """The δ and the filter orders of the budget a reservation entry recorded (None
        where it recorded none). Read for sealing only: a seal names its own δ and orders."""
        raw = conn.execute(sa.select(entries_t.c.payload).where(entries_t.c.seq == seq)).scalar()
        try:
            budget = json.loads(str(raw)).get("budget") or {}
            delta = budget.get("delta")
            delta = float(delta) if isinstance(delta, float) and 0 < delta < 1 else None
            orders = budget.get("orders")
            grid = tuple(float(a) for a in orders) if isinstance(orders, list) and orders else None
        except (TypeError, ValueError, AttributeError):
            return None, None
        return delta, grid

    def _close(
        self,
        reservation_id: str,
        kind: str,
        status: str,
        payload: dict[str, Any],
        actor: str | None,
        mechanism: DpSgdMechanism | None = None,
    ) -> Entry:
        closing: Closing = {}
        class_closing: ClassClosing = {}
        rdp_seals: list[dict[str, Any]] = []
        delta: float | None = None
        if status in ("committed", "released"):  # an abort leaves the plan charged (and a
            # crash's recovery composes nothing: budget reads compose what is not sealed)
            closing = self._closing(reservation_id, mechanism)
            class_closing, rdp_seals, delta = self._class_closing(reservation_id, mechanism)
        with self._write() as conn:
            st = self._state(conn)
            info = st.reservation(reservation_id)
            integrity.guard(conn, st, info.dataset, info.blocks)
            if info.status != "pending":
                raise UsageError(
                    f"reservation {reservation_id} is {info.status}, not pending: "
                    f"it cannot be {status} again"
                )
            seals: list[Seal] = []
            for b, (before, after, state, acc) in closing.items():
                if st.multiset(info.dataset, b)[0] == before:  # unchanged meanwhile
                    seals.append(store_state(conn, info.dataset, b, acc, after, state))
            body = {"reservation": reservation_id, **payload}
            if seals:
                body["composition"] = [seal.to_dict() for seal in seals]
            class_seals = self._close_class_seals(conn, info.accountant, class_closing, delta)
            if class_seals:
                body["class_composition"] = class_seals
            if rdp_seals:
                body["class_rdp"] = rdp_seals
            entry = append_entry(conn, kind, body, actor)
            values: dict[str, Any] = {"status": status, "closed_seq": entry.seq}
            if mechanism is not None:
                values["mechanism"] = canonical(mechanism_to_dict(mechanism))
            conn.execute(
                reservations_t.update()
                .where(reservations_t.c.id == reservation_id)
                .values(**values)
            )
            return entry

    def _close_class_seals(
        self, conn: Connection, accountant: str | None, closing: ClassClosing, delta: float | None
    ) -> list[dict[str, Any]]:
        """Cache the states composed for a close's classes; their seals, with each state's ε
        at ``delta``. (A seal binds the class, the multiset and the blob, and the ε the
        multiset, so a state stored here is used only by a class whose charges are that
        multiset, or more: storing it is safe even if charges changed.)"""
        if not closing:
            return []
        acc = self._acc(accountant or "pld")
        return [
            classes.store_class_state(
                conn, key, acc, after, state, None if delta is None or eps is None else (delta, eps)
            )
            for key, (_, after, state, eps) in closing.items()
        ]

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
            {
                "steps": taken,
                "mechanism": mechanism_to_dict(actual),
                "run_id": run_id or info.run_id,
            },
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

    # ------------------------------------------------------------------ repair
    def repair(self, *, accountant: str = "pld", actor: str | None = None) -> Entry | None:
        """Rebuild the projection tables from the entries when they disagree, drop cached
        states that disagree with their seals, and seal a fresh composition (``accountant``)
        of every block whose cache is not sealed for its charges (a ledger written before
        seals existed). One ``ledger_repaired`` entry records what was found and sealed;
        None when there was nothing to do. Composes outside the lock, like a reservation."""
        acc = self._acc(accountant)
        key = accountant_key(acc)
        composed: dict[tuple[str, str], tuple[Multiset, Any]] = {}
        with self._read() as conn:
            st = self._state(conn)
            for blk in st.blocks_of():
                multiset = st.multiset(blk.dataset, blk.block)[0]
                if not multiset:
                    continue
                seal = st.seal(blk.dataset, blk.block, key)
                state, current = composed_state(conn, blk.dataset, blk.block, acc, multiset, seal)
                if not current:
                    composed[(blk.dataset, blk.block)] = (multiset, state)
        with self._write() as conn:
            st = self._state(conn)
            found = integrity.check(conn, st)
            if any(d.table != integrity.CACHE for d in found.disagreements):
                integrity.rebuild(conn, st)
            integrity.drop_cache_rows(conn, found.disagreements)
            seals = [
                store_state(conn, ds, b, acc, multiset, state)
                for (ds, b), (multiset, state) in composed.items()
                if st.multiset(ds, b)[0] == multiset  # unchanged meanwhile
            ]
            if not found.disagreements and not seals:
                return None
            return append_entry(
                conn,
                REPAIR_KIND,
                {
                    "disagreements": [d.to_dict() for d in found.disagreements[:100]],
                    "disagreements_total": len(found.disagreements),
                    "composition": [seal.to_dict() for seal in seals],
                },
                actor,
            )
