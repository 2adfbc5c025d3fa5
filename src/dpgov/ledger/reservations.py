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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov import names
from dpgov.accounting import (
    DpSgdMechanism,
    InfeasibleBudget,
    calibrate_against_states,
    is_mechanism,
    mechanism_to_dict,
    mechanism_type_names,
)
from dpgov.accounting.calibrate import SIGMA_MAX, SIGMA_MIN
from dpgov.accounting.filters import calibrate_filter, filter_epsilon
from dpgov.errors import BudgetExceeded, DpgovError, Refused, UsageError
from dpgov.ledger import classes, integrity, membership
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import Entry, canonical
from dpgov.ledger.classes import DomainView, HClass
from dpgov.ledger.composition import (
    accountant_key,
    composed_state,
    digest,
    store_state,
    with_charge,
    without,
)
from dpgov.ledger.members_state import rdp_seal
from dpgov.ledger.patients import FIXED
from dpgov.ledger.records import Reservation
from dpgov.ledger.schedules import ScheduleStore, free_slot, read_schedules
from dpgov.ledger.schema import charges_t, entries_t, reservations_t
from dpgov.ledger.verified import REPAIR_KIND, Multiset, Seal, VerifiedState
from dpgov.policy.schema import Budget

# A block's charges before a close, after it, and the state composed for after.
Closing = dict[str, tuple[Multiset, Multiset, Any, Any]]
# A class's charges before a close, after it, the state composed for after and its ε at the
# reservation's δ (by class key), with the RDP seals of the multisets after the close.
ClassClosing = dict[str, tuple[Multiset, Multiset, Any, float | None]]


@dataclass
class ClassPlan:
    """The history classes a charge to some blocks reaches, their charges now, and (per
    distinct multiset) what judging the charge needs: for classes under the fixed rule the
    state now, the state with the charge and its ε; for classes under the adaptive rule the
    RDP filter's ε now and after; for every class the RDP vector after (sealed on the entry
    for budget reads). The accountant's state of a class under the adaptive rule is not
    composed here (it decides nothing): the close composes it (:meth:`Ledger._close`)."""

    views: dict[str, tuple[DomainView, bool]]
    affected: list[HClass]
    before: dict[str, Multiset]  # class key -> multiset now
    states: dict[str, tuple[Any, Any, float]] = field(default_factory=dict)  # by digest
    # by digest, for classes under the adaptive rule: the RDP filter's ε now and after
    filtered: dict[str, tuple[float, float]] = field(default_factory=dict)
    # by digest: the RDP vector over the budget's orders of the multiset with the charge
    rdp_after: dict[str, list[float]] = field(default_factory=dict)


class Ledger(ScheduleStore):
    """The privacy ledger. Open with :meth:`open`; every method is safe across processes."""

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
        """Smallest σ such that the run's own ε (the accountant's: one run is not adaptive)
        stays within ``target_epsilon`` and every history class the run reaches stays within
        the limit under the rule :meth:`reserve` applies to it: the RDP filter over
        ``budget.orders`` for a domain under ``adaptive``, the accountant's composition under
        ``fixed``. The worst class binds (each rule is monotone in σ, so the smallest σ that
        satisfies all is the largest of the smallest σ of each)."""
        acc = self._acc(budget.accountant)
        blocks = self._check_blocks(dataset, blocks)
        with self._read() as conn:
            st = self._state(conn)
            for b in blocks:
                st.block(dataset, b)
            plan = self._class_plan(conn, st, dataset, blocks, acc, None)
            comp = classes.Composer(conn, st, acc)
            fixed: dict[str, tuple[HClass, Multiset]] = {}
            adaptive: dict[str, tuple[HClass, Multiset]] = {}
            for c in plan.affected:
                m = plan.before[c.key]
                (fixed if budget.mode_for(c.domain) == FIXED else adaptive)[digest(m)] = (c, m)
            fixed = {d: cm for d, cm in fixed.items() if cm[1]}
            states = [comp.state(c, m)[0] for c, m in classes.maximal(fixed.values())]
        histories = [self._rdp_of(m, budget.orders) for _, m in adaptive.values()]
        priors = [acc.empty(), *states]
        targets = [target_epsilon] + [budget.epsilon_per_block] * len(states)
        where = f"dataset {dataset!r}, blocks {', '.join(blocks)}"
        try:
            sigma = calibrate_against_states(
                target_epsilon=min(targets),
                delta=budget.delta,
                sample_rate=sample_rate,
                steps=steps,
                priors=priors,
                accountant=budget.accountant,
                targets=targets,
            )
            if not adaptive:
                return sigma
            return max(
                sigma,
                calibrate_filter(
                    histories,
                    epsilon=budget.epsilon_per_block,
                    delta=budget.delta,
                    orders=budget.orders,
                    charge_rdp=lambda s: self._rdp_of(
                        [
                            (
                                DpSgdMechanism(
                                    noise_multiplier=s, sample_rate=sample_rate, steps=steps
                                ),
                                1,
                            )
                        ],
                        budget.orders,
                    ),
                    sigma_min=SIGMA_MIN,
                    sigma_max=SIGMA_MAX,
                ),
            )
        except InfeasibleBudget as err:
            raise Refused(f"{where}: {err}") from err

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

        Each history class reached is judged by its domain's rule (``budget.mode_for``):
        ``adaptive``, the RDP filter over ``budget.orders``; ``fixed``, the accountant's tight
        composition, and only for a run of a committed schedule
        (:mod:`dpgov.ledger.schedules`). Raises :class:`BudgetExceeded` (nothing written) when
        a class would pass the limit, :class:`Refused` for a fixed-mode run outside every
        committed schedule.
        """
        names.storable(
            dataset=dataset, blocks=blocks, run_id=run_id, data_version=data_version, actor=actor
        )
        if not is_mechanism(mechanism):
            raise UsageError(f"mechanism must be a {mechanism_type_names()}, found {mechanism!r}")
        blocks = self._check_blocks(dataset, blocks)
        acc = self._acc(budget.accountant)
        key = accountant_key(acc)
        run_eps = self._epsilon(acc, acc.add(acc.empty(), mechanism), budget.delta)
        if max_run_epsilon is not None and run_eps > max_run_epsilon:
            raise Refused(
                f"this run alone costs ε={run_eps:.4f}, over the per-run limit {max_run_epsilon:g}"
            )

        # Compose outside the lock (slow), then re-check under the lock (fast).
        with self._read() as conn:
            st = self._state(conn)
            for b in blocks:
                if st.block(dataset, b).retired:
                    raise Refused(f"block {b!r} of dataset {dataset!r} is retired")
            planned = {
                b: with_charge(
                    conn,
                    dataset,
                    b,
                    acc,
                    mechanism,
                    st.multiset(dataset, b)[0],
                    st.seal(dataset, b, key),
                )
                for b in blocks
            }
            cplan = self._class_plan(conn, st, dataset, blocks, acc, mechanism, budget=budget)

        rid = str(uuid.uuid4())
        with self._write() as conn:
            st = self._state(conn)
            for b in blocks:
                if st.block(dataset, b).retired:
                    raise Refused(f"block {b!r} of dataset {dataset!r} is retired")
            integrity.guard(conn, st, dataset, blocks)
            for b in blocks:
                multiset, _, _ = st.multiset(dataset, b)
                if multiset != planned[b].multiset:  # someone charged this block meanwhile
                    planned[b] = with_charge(
                        conn, dataset, b, acc, mechanism, multiset, st.seal(dataset, b, key)
                    )
            cplan = self._class_plan(
                conn, st, dataset, blocks, acc, mechanism, prior=cplan, budget=budget
            )
            eps_after = self._check_classes(cplan, dataset, blocks, acc, run_eps, budget)
            slot = self._schedule_slot(conn, st, cplan, dataset, blocks, mechanism, budget)
            seals = [
                store_state(conn, dataset, b, acc, planned[b].after, planned[b].after_state)
                for b in blocks
            ]
            class_seals, structure_seals, rdp_seals = self._store_plan(
                conn, cplan, acc, mechanism, budget
            )
            entry = append_entry(
                conn,
                "reservation",
                {
                    "reservation": rid,
                    "dataset": dataset,
                    "blocks": blocks,
                    "mechanism": mechanism_to_dict(mechanism),
                    "run_id": run_id,
                    "data_version": data_version,
                    "policy_sha256": policy_sha256,
                    "budget": budget.model_dump(),
                    "epsilon_run": run_eps,
                    "epsilon_after": eps_after,
                    "composition": [seal.to_dict() for seal in seals],
                    "class_composition": class_seals,
                    "class_structure": structure_seals,
                    "class_rdp": rdp_seals,
                    "enforced": sorted({budget.mode_for(c.domain) for c in cplan.affected}),
                    "schedule": slot,
                },
                actor,
            )
            conn.execute(
                reservations_t.insert().values(
                    id=rid,
                    dataset=dataset,
                    status="pending",
                    mechanism=canonical(mechanism_to_dict(mechanism)),
                    planned_steps=mechanism.steps,
                    run_id=run_id,
                    seq=entry.seq,
                )
            )
            for b in blocks:
                conn.execute(
                    charges_t.insert().values(reservation_id=rid, dataset=dataset, block=b)
                )
        return Reservation(
            id=rid,
            seq=entry.seq,
            dataset=dataset,
            blocks=blocks,
            mechanism=mechanism,
            epsilon_run=run_eps,
            epsilon_after=eps_after,
        )

    def _class_plan(
        self,
        conn: Connection,
        st: VerifiedState,
        dataset: str,
        blocks: Sequence[str],
        acc: Any,
        mechanism: DpSgdMechanism | None,
        prior: ClassPlan | None = None,
        budget: Budget | None = None,
    ) -> ClassPlan:
        """The classes a charge to ``blocks`` reaches (the membership of the charged blocks
        checked against the chain), each distinct multiset composed with ``mechanism`` once
        (what ``prior`` composed for the same multiset is reused)."""
        keys = [(dataset, b) for b in blocks]
        membership.read(conn, st.members, keys)  # LedgerInconsistent when edited
        vs = self._views(conn, st, keys)
        affected = [c for v, _ in vs.values() for c in v.reached_by(keys)]
        plan = ClassPlan(
            vs,
            affected,
            {c.key: classes.class_multiset(st, c) for c in affected},
        )
        if mechanism is None or budget is None:
            return plan
        comp = classes.Composer(conn, st, acc)
        for c in affected:  # the accountant's composition, for classes under the fixed rule
            d = digest(plan.before[c.key])
            if budget.mode_for(c.domain) != FIXED or d in plan.states:
                continue
            if prior is not None and d in prior.states:
                plan.states[d] = prior.states[d]
                continue
            state = comp.state(c, plan.before[c.key])[0]
            after = acc.add(state, mechanism)
            plan.states[d] = (state, after, self._epsilon(acc, after, budget.delta))
        for c in affected:  # the RDP vectors after the charge, and the filter (cheap)
            d = digest(plan.before[c.key])
            if d not in plan.rdp_after:
                if prior is not None and d in prior.rdp_after:
                    plan.rdp_after[d] = prior.rdp_after[d]
                else:
                    plan.rdp_after[d] = self._rdp_of(
                        classes.plus(plan.before[c.key], mechanism), budget.orders
                    )
            if budget.mode_for(c.domain) == FIXED or d in plan.filtered:
                continue
            if prior is not None and d in prior.filtered:
                plan.filtered[d] = prior.filtered[d]
                continue
            now = self._rdp_of(plan.before[c.key], budget.orders)
            plan.filtered[d] = (
                filter_epsilon(now, budget.delta, budget.orders) if plan.before[c.key] else 0.0,
                filter_epsilon(plan.rdp_after[d], budget.delta, budget.orders),
            )
        return plan

    def _check_classes(
        self,
        plan: ClassPlan,
        dataset: str,
        blocks: Sequence[str],
        acc: Any,
        run_eps: float,
        budget: Budget,
    ) -> dict[str, float]:
        """Refuse (BudgetExceeded naming a charged block of the worst class) when any class
        would pass the limit under its domain's rule; else each charged block's worst-class
        enforced ε after the charge. Under ``adaptive`` a class's ε is the RDP filter's, so
        ``ε after ≤ limit`` is exactly: some α of Λ has Σ RDP(α) ≤ ε − log(|Λ|/δ)/(α − 1)."""
        after: dict[str, float] = {}
        for c in plan.affected:
            d = digest(plan.before[c.key])
            after[c.key] = plan.filtered[d][1] if d in plan.filtered else plan.states[d][2]
        limit = budget.epsilon_per_block
        out: dict[str, float] = {}
        named: list[tuple[str, list[HClass]]] = []
        for b in blocks:  # the first charged block (in order) whose worst class would pass
            cs = [c for v, _ in plan.views.values() for c in v.of_block((dataset, b))]
            named.append((b, cs))
        seen = {c.key for _, cs in named for c in cs}
        for c in plan.affected:  # classes reached through a charged block without members
            if c.key not in seen:
                first = next(b for b in blocks if (dataset, b) in c.reach)
                named.append((first, [c]))
        for b, cs in named:
            worst = max(cs, key=lambda c: after[c.key], default=None)
            if worst is not None and after[worst.key] > limit:
                d = digest(plan.before[worst.key])
                if d in plan.filtered:
                    spent = plan.filtered[d][0]
                else:
                    before = plan.states[d][0]
                    spent = (
                        self._epsilon(acc, before, budget.delta) if plan.before[worst.key] else 0.0
                    )
                raise BudgetExceeded(
                    dataset=dataset,
                    block=b,
                    requested=run_eps,
                    spent=spent,
                    limit=limit,
                    after=after[worst.key],
                )
        for b, cs in named[: len(blocks)]:
            out[b] = max((after[c.key] for c in cs), default=run_eps)
        return out

    def _schedule_slot(
        self,
        conn: Connection,
        st: VerifiedState,
        plan: ClassPlan,
        dataset: str,
        blocks: Sequence[str],
        mechanism: DpSgdMechanism,
        budget: Budget,
    ) -> dict[str, Any] | None:
        """The committed-schedule slot this reservation takes (:mod:`dpgov.ledger.schedules`),
        or None; refused when a class it reaches is under ``fixed`` and no slot is free."""
        fixed = sorted({c.domain for c in plan.affected if budget.mode_for(c.domain) == FIXED})
        schedules = read_schedules(conn, st)
        hit = free_slot(st, schedules, dataset, blocks, mechanism) if schedules else None
        if hit is None:
            if fixed:
                raise Refused(
                    f"budget.composition is fixed for domain {fixed[0]!r}: tight composition is "
                    f"valid only for a schedule committed in advance, and no committed schedule "
                    f"of dataset {dataset!r} on blocks {', '.join(blocks)} has a free run "
                    f"{mechanism_to_dict(mechanism)} (`dpgov ledger plan SCHEDULE_FILE`); "
                    f"nothing charged"
                )
            return None
        return {"schedule": hit[0].id, "slot": hit[1]}

    @staticmethod
    def _store_plan(
        conn: Connection, plan: ClassPlan, acc: Any, mechanism: DpSgdMechanism, budget: Budget
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[dict[str, Any]]]:
        """Cache the state after the charge of each affected class it was composed for (the
        fixed rule's), and each domain's structure not yet sealed; the seals the reservation
        entry carries: with each such class's ε after the charge at the budget's δ, and each
        class's RDP vector after the charge, so budget reads need neither compose again."""
        class_seals = [
            classes.store_class_state(
                conn,
                c.key,
                acc,
                classes.plus(plan.before[c.key], mechanism),
                plan.states[digest(plan.before[c.key])][1],
                epsilon=(budget.delta, plan.states[digest(plan.before[c.key])][2]),
            )
            for c in plan.affected
            if digest(plan.before[c.key]) in plan.states
        ]
        structure_seals = [
            classes.store_structure(conn, v.structure_key, v.structure)
            for v, is_sealed in plan.views.values()
            if not is_sealed
        ]
        rdp_seals: dict[str, dict[str, Any]] = {}
        done: set[str] = set()
        for c in plan.affected:
            d = digest(plan.before[c.key])
            if d in done or d not in plan.rdp_after:
                continue
            done.add(d)
            after = digest(classes.plus(plan.before[c.key], mechanism))
            rdp_seals[after] = rdp_seal(after, budget.orders, plan.rdp_after[d])
        return class_seals, structure_seals, [rdp_seals[k] for k in sorted(rdp_seals)]

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
