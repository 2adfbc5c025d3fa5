"""Schedules committed in advance: what makes ``budget.composition: fixed`` valid.

Tight composition (PLD) of a sequence of mechanisms is a valid guarantee only when the
sequence was fixed before any of its outputs was seen (docs/composition.md). Under ``fixed``
the ledger therefore admits a reservation only if it is a run of a *committed schedule*: a
chained ``schedule_committed`` entry, written by ``dpgov ledger plan SCHEDULE_FILE`` (or by a
sweep, which records its trials as one schedule before the first runs), that lists the planned
mechanisms for one dataset and one set of blocks. Each planned run is a *slot*; a reservation
with the same dataset, the same blocks and exactly the planned mechanism takes the earliest free
slot of the earliest schedule committed before it. A released reservation (no step ran) frees its
slot; a committed or aborted one keeps it.

Slots are assigned from the verified state alone (reservations in ledger order, greedily), so
the writer and every reader agree without a table. Schedule entries are not part of the state
the ledger rebuilds for budgets (:mod:`dpgov.ledger.verified`), so :func:`read_schedules`
re-hashes each one it uses against its stored hash, which the chain links (an entry edited in
the database is :class:`~dpgov.ledger.verified.LedgerInconsistent`, never a schedule).

The file (YAML)::

    dataset: flchain
    blocks: [b0, b1]
    purpose: retraining waves, 2026 Q1      # optional
    runs:
      - {noise_multiplier: 1.2, sample_rate: 0.02, steps: 500}
      - {noise_multiplier: 1.5, sample_rate: 0.02, steps: 500, count: 3}
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov import names
from dpgov.accounting import (
    AccountingInputError,
    DpSgdMechanism,
    mechanism_from_dict,
    mechanism_to_dict,
)
from dpgov.accounting.filters import filter_epsilon
from dpgov.errors import Refused, UsageError
from dpgov.ledger import classes, integrity, membership
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import Entry, entry_hash
from dpgov.ledger.patients import FIXED, PatientStore
from dpgov.ledger.schema import entries_t
from dpgov.ledger.verified import LedgerInconsistent, Multiset, VerifiedState
from dpgov.policy.schema import Budget
from dpgov.yamlio import parse_mapping, read_bytes

SCHEDULE_KIND = "schedule_committed"
MAX_RUNS = 10_000  # slots of one schedule
_RUN_KEYS = {"noise_multiplier", "sample_rate", "steps", "count", "kind", "neighbouring"}


@dataclass(frozen=True)
class Schedule:
    """One committed schedule, as its hash-checked entry holds it."""

    id: str
    seq: int
    dataset: str
    blocks: tuple[str, ...]
    runs: tuple[DpSgdMechanism, ...]
    purpose: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.id,
            "seq": self.seq,
            "dataset": self.dataset,
            "blocks": list(self.blocks),
            "runs": [mechanism_to_dict(m) for m in self.runs],
            "purpose": self.purpose,
        }


@dataclass(frozen=True)
class ScheduleFile:
    dataset: str
    blocks: list[str]
    runs: list[DpSgdMechanism]
    purpose: str
    sha256: str


def parse_schedule_file(path: str | Path) -> ScheduleFile:
    """Read a schedule file (format in the module docstring); UsageError naming what is wrong."""
    where = f"schedule file {path}"
    raw = read_bytes(path, where=where)
    data = parse_mapping(raw, where=where)
    unknown = sorted(set(map(str, data)) - {"dataset", "blocks", "runs", "purpose"})
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (dataset, blocks, runs, purpose)")
    dataset = data.get("dataset")
    blocks = data.get("blocks")
    if not isinstance(dataset, str):
        raise UsageError(f"{where}: 'dataset' must be a name, found {dataset!r}")
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, str) for b in blocks):
        raise UsageError(f"{where}: 'blocks' must be a non-empty list of names, found {blocks!r}")
    purpose = data.get("purpose", "")
    if not isinstance(purpose, str) or len(purpose) > 500:
        raise UsageError(f"{where}: 'purpose' must be a text of at most 500 characters")
    runs_in = data.get("runs")
    if not isinstance(runs_in, list) or not runs_in:
        raise UsageError(f"{where}: 'runs' must be a non-empty list of planned runs")
    runs: list[DpSgdMechanism] = []
    for i, r in enumerate(runs_in, 1):
        if not isinstance(r, dict):
            raise UsageError(f"{where}: run {i} must be a mapping, found {r!r}")
        bad = sorted(set(map(str, r)) - _RUN_KEYS)
        if bad:
            raise UsageError(f"{where}: run {i} has an unknown key {bad[0]!r}")
        count = r.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UsageError(f"{where}: run {i}: count must be an integer >= 1, found {count!r}")
        fields = {k: v for k, v in r.items() if k != "count"}
        fields.setdefault("kind", "dp_sgd")
        try:
            mech = mechanism_from_dict(fields)
        except (AccountingInputError, KeyError, TypeError, ValueError, UsageError) as err:
            raise UsageError(f"{where}: run {i}: {err}") from err
        runs += [mech] * count
        if len(runs) > MAX_RUNS:
            raise UsageError(f"{where}: more than {MAX_RUNS} planned runs")
    digest = hashlib.sha256(raw).hexdigest()
    return ScheduleFile(dataset, list(blocks), runs, purpose, digest)


def read_schedules(conn: Connection, st: VerifiedState) -> list[Schedule]:
    """Every schedule committed up to the verified state's entry, oldest first, each entry
    re-hashed against its stored (chain-linked) hash."""
    c = entries_t.c
    rows = conn.execute(
        sa.select(c.seq, c.payload, c.time, c.actor, c.prev_hash, c.hash)
        .where(c.kind == SCHEDULE_KIND, c.seq <= st.seq)
        .order_by(c.seq)
    ).all()
    out = []
    for seq, text, time, actor, prev, stored in rows:
        try:
            p = json.loads(text)
            ok = (
                entry_hash(
                    seq=seq, kind=SCHEDULE_KIND, payload=p, time=time, actor=actor, prev_hash=prev
                )
                == stored
            )
            sched = Schedule(
                id=str(p["schedule"]),
                seq=int(seq),
                dataset=str(p["dataset"]),
                blocks=tuple(sorted(p["blocks"])),
                runs=tuple(mechanism_from_dict(m) for m in p["runs"]),
                purpose=str(p.get("purpose", "")),
            )
        except (ValueError, KeyError, TypeError, AccountingInputError) as err:
            raise LedgerInconsistent(
                f"ledger entry {seq} ({SCHEDULE_KIND}) cannot be read: {err}", seq
            ) from err
        if not ok:
            raise LedgerInconsistent(
                f"ledger entries cannot be trusted: entry {seq} ({SCHEDULE_KIND}) does not "
                f"match its hash",
                seq,
            )
        out.append(sched)
    return out


def used_slots(st: VerifiedState, schedules: Sequence[Schedule]) -> dict[str, set[int]]:
    """Which slots of each schedule the ledger's reservations hold (released ones hold none):
    each reservation, in ledger order, takes the earliest free matching slot of the earliest
    schedule committed before it."""
    used: dict[str, set[int]] = {s.id: set() for s in schedules}
    for r in st.reservations.values():
        if r.status == "released":
            continue
        hit = _first_free(schedules, used, r.dataset, r.blocks, r.planned, before=r.seq)
        if hit is not None:
            used[hit[0].id].add(hit[1])
    return used


def _first_free(
    schedules: Sequence[Schedule],
    used: dict[str, set[int]],
    dataset: str,
    blocks: Sequence[str],
    mechanism: Any,
    *,
    before: int,
) -> tuple[Schedule, int] | None:
    want = tuple(sorted(blocks))
    for s in schedules:
        if s.seq >= before or s.dataset != dataset or s.blocks != want:
            continue
        for i, m in enumerate(s.runs):
            if i not in used[s.id] and m == mechanism:
                return s, i
    return None


def free_slot(
    st: VerifiedState,
    schedules: Sequence[Schedule],
    dataset: str,
    blocks: Sequence[str],
    mechanism: Any,
) -> tuple[Schedule, int] | None:
    """The slot a new reservation of ``mechanism`` on ``blocks`` would take, or None."""
    used = used_slots(st, schedules)
    return _first_free(schedules, used, dataset, blocks, mechanism, before=st.seq + 1)


def _plus(multiset: Multiset, runs: Sequence[DpSgdMechanism]) -> Multiset:
    out = multiset
    for m in runs:
        out = classes.plus(out, m)
    return out


class ScheduleStore(PatientStore):
    """The store with committed schedules; :class:`dpgov.ledger.Ledger` extends it."""

    def schedules(self) -> list[dict[str, Any]]:
        """Every committed schedule with the slots its reservations hold."""
        with self._read() as conn:
            st = self._state(conn)
            found = read_schedules(conn, st)
            used = used_slots(st, found)
        return [{**s.to_dict(), "used": sorted(used[s.id])} for s in found]

    def plan_schedule(
        self,
        *,
        dataset: str,
        blocks: Sequence[str],
        runs: Sequence[DpSgdMechanism],
        budget: Budget,
        purpose: str = "",
        source_sha256: str | None = None,
        actor: str | None = None,
        new_blocks: bool = False,
    ) -> Entry:
        """Commit a schedule of planned runs for ``blocks`` (one ``schedule_committed``
        entry). Refused (nothing written) when a block is retired, or when some history class
        the blocks reach could not afford the whole schedule on top of what it holds, under
        its domain's rule (the accountant's composition under ``fixed``, the RDP filter under
        ``adaptive``). ``new_blocks``: blocks of the dataset not registered yet may be named
        (a sweep's first trial registers them; they hold no history, and the schedule alone
        must fit); otherwise an unknown block is bad input."""
        names.storable(dataset=dataset, blocks=blocks, actor=actor)
        blocks = list(dict.fromkeys(blocks))
        if not runs:
            raise UsageError("a schedule needs at least one planned run")
        if len(runs) > MAX_RUNS:
            raise UsageError(f"a schedule holds at most {MAX_RUNS} runs, found {len(runs)}")
        with self._write() as conn:
            st = self._state(conn)
            known = [b for b in blocks if (dataset, b) in st.blocks] if new_blocks else blocks
            for b in known:
                if st.block(dataset, b).retired:
                    raise Refused(f"block {b!r} of dataset {dataset!r} is retired")
            self._check_schedule(conn, st, dataset, known, runs, budget)
            return append_entry(
                conn,
                SCHEDULE_KIND,
                {
                    "schedule": str(uuid.uuid4()),
                    "dataset": dataset,
                    "blocks": sorted(blocks),
                    "runs": [mechanism_to_dict(m) for m in runs],
                    "purpose": purpose,
                    "source_sha256": source_sha256,
                    "budget": budget.model_dump(mode="json"),
                },
                actor,
            )

    def _check_schedule(
        self,
        conn: Connection,
        st: VerifiedState,
        dataset: str,
        blocks: Sequence[str],
        runs: Sequence[DpSgdMechanism],
        budget: Budget,
    ) -> None:
        keys = [(dataset, b) for b in blocks]
        acc = self._acc(budget.accountant)
        reached: list[Any] = []
        if keys:
            integrity.guard(conn, st, dataset, blocks)
            membership.read(conn, st.members, keys)  # LedgerInconsistent when edited
            vs = self._views(conn, st, keys)
            reached = [c for v, _ in vs.values() for c in v.reached_by(keys)]
        comp = classes.Composer(conn, st, acc)
        # new patients (blocks not registered yet) hold nothing: the schedule alone must fit
        fresh = classes.HClass("", dataset, (), (), 0)
        for c in [*reached, fresh]:
            before = classes.class_multiset(st, c) if c is not fresh else []
            if budget.mode_for(c.domain) == FIXED:
                state = comp.state(c, before)[0] if before else acc.empty()
                for m in runs:
                    state = acc.add(state, m)
                eps = self._epsilon(acc, state, budget.delta)
                rule = f"tight {budget.accountant} composition"
            else:
                rdp = self._rdp_of(_plus(before, runs), budget.orders)
                eps = filter_epsilon(rdp, budget.delta, budget.orders)
                rule = "the RDP filter"
            if eps > budget.epsilon_per_block:
                raise Refused(
                    f"schedule refused: with its {len(runs)} runs, patients of domain "
                    f"{c.domain!r} reached through blocks {', '.join(blocks)} of dataset "
                    f"{dataset!r} would reach ε={eps:.4f} under {rule}, over the limit "
                    f"{budget.epsilon_per_block:g}; nothing recorded"
                )


__all__ = [
    "MAX_RUNS",
    "SCHEDULE_KIND",
    "Schedule",
    "ScheduleFile",
    "ScheduleStore",
    "free_slot",
    "parse_schedule_file",
    "read_schedules",
    "used_slots",
]
