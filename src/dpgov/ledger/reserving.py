"""Reserving: how the ledger plans and admits a charge (:class:`Reserving`, the base of
:class:`dpgov.ledger.reservations.Ledger`, which adds the closes: commit, release, abort).

A reservation composes its candidate state *before* taking the global write lock, then
re-checks under the lock that the block's charges did not change meanwhile (and recomposes if
they did): the check and the charge are atomic, and the slow part runs outside the lock.
Calibration answers the largest noise-free σ the same admission rule accepts.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
from dpgov.errors import BudgetExceeded, Refused, UsageError
from dpgov.ledger import classes, integrity, membership
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import canonical
from dpgov.ledger.classes import DomainView, HClass
from dpgov.ledger.composition import (
    accountant_key,
    digest,
    store_state,
    with_charge,
)
from dpgov.ledger.members_state import rdp_seal
from dpgov.ledger.patients import FIXED
from dpgov.ledger.records import Reservation
from dpgov.ledger.schedules import ScheduleStore, free_slot, read_schedules
from dpgov.ledger.schema import charges_t, reservations_t
from dpgov.ledger.verified import Multiset, VerifiedState
from dpgov.policy.schema import Budget


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


class Reserving(ScheduleStore):
    """Planning and admitting charges; every method is safe across processes."""

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
