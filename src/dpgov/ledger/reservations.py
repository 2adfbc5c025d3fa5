"""The ledger's reservation protocol, on top of its store: the :class:`Ledger`.

reserve (the planned mechanism is charged to every block) → commit (the mechanism actually run
replaces the plan; never more steps than reserved) or release (only if no step ran) or abort (a
crash: the plan stays charged). Pending reservations count as spent.

A reservation composes its candidate state *before* taking the global write lock, then
re-checks under the lock that the block's charges did not change meanwhile (and recomposes if
they did): the check and the charge are atomic, and the slow part runs outside the lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from dpgov.accounting import (
    DpSgdMechanism,
    InfeasibleBudget,
    calibrate_against_states,
    is_mechanism,
    mechanism_to_dict,
    mechanism_type_names,
)
from dpgov.errors import BudgetExceeded, Refused, UsageError
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import Entry, canonical
from dpgov.ledger.composition import charged_multiset, composed_state, store_state, with_charge
from dpgov.ledger.records import Reservation
from dpgov.ledger.schema import charges_t, reservations_t
from dpgov.ledger.store import LedgerStore
from dpgov.policy.schema import Budget


class Ledger(LedgerStore):
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
        """Smallest σ such that the run's own ε stays within ``target_epsilon`` and every
        block's composed ε (its charges and this run) stays within the block limit."""
        acc = self._acc(budget.accountant)
        blocks = self._check_blocks(dataset, blocks)
        with self._read() as conn:
            for b in blocks:
                self._block_row(conn, dataset, b)
            states = [
                composed_state(conn, dataset, b, acc, charged_multiset(conn, dataset, b)[0])[0]
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
        if not is_mechanism(mechanism):
            raise UsageError(f"mechanism must be a {mechanism_type_names()}, found {mechanism!r}")
        blocks = self._check_blocks(dataset, blocks)
        acc = self._acc(budget.accountant)
        run_eps = self._epsilon(acc, acc.add(acc.empty(), mechanism), budget.delta)
        if max_run_epsilon is not None and run_eps > max_run_epsilon:
            raise Refused(
                f"this run alone costs ε={run_eps:.4f}, over the per-run limit {max_run_epsilon:g}"
            )

        # Compose outside the lock (slow), then re-check under the lock (fast).
        with self._read() as conn:
            for b in blocks:
                row = self._block_row(conn, dataset, b)
                if row.retired:
                    raise Refused(f"block {b!r} of dataset {dataset!r} is retired")
            planned = {b: with_charge(conn, dataset, b, acc, mechanism) for b in blocks}

        rid = str(uuid.uuid4())
        with self._write() as conn:
            for b in blocks:
                row = self._block_row(conn, dataset, b)
                if row.retired:
                    raise Refused(f"block {b!r} of dataset {dataset!r} is retired")
                multiset, _, _ = charged_multiset(conn, dataset, b)
                if multiset != planned[b].multiset:  # someone charged this block meanwhile
                    planned[b] = with_charge(conn, dataset, b, acc, mechanism, multiset)
            eps_after: dict[str, float] = {}
            for b in blocks:
                eps_after[b] = self._epsilon(acc, planned[b].after_state, budget.delta)
                if eps_after[b] > budget.epsilon_per_block:
                    before = planned[b]
                    spent = (
                        self._epsilon(acc, before.state, budget.delta) if before.multiset else 0.0
                    )
                    raise BudgetExceeded(
                        dataset=dataset,
                        block=b,
                        requested=run_eps,
                        spent=spent,
                        limit=budget.epsilon_per_block,
                        after=eps_after[b],
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
                store_state(conn, dataset, b, acc, planned[b].after, planned[b].after_state)
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
            entry = append_entry(conn, kind, {"reservation": reservation_id, **payload}, actor)
            values: dict[str, Any] = {"status": status, "closed_seq": entry.seq}
            if mechanism is not None:
                values["mechanism"] = canonical(mechanism_to_dict(mechanism))
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
