"""Rebuild the ledger's state from its entries alone, and recompute ε from scratch.

The ledger keeps projections (blocks, reservations, charges) and a composition cache beside
its entries. The audit trusts none of them: :func:`replay` walks the entries in order and
rebuilds every block and every charge, checking each state change against the protocol
(reserve → commit | release | abort, blocks registered before they are charged, commits never
longer than reserved and of the same σ and q). :class:`Epsilons` then composes a block's
charges from scratch.

The math it relies on: a DP-SGD mechanism ``(σ, q, T)`` is the T-fold self-composition of one
Poisson-subsampled Gaussian step, and composition is commutative and associative, so the
charges of a block compose exactly like one mechanism per distinct ``(σ, q)`` run for the sum
of their steps. Composing that multiset is the same accounting the ledger does (it groups
identical mechanisms only, with the same PLD builder), reached by an independent path; the two
agree to rounding. Every PLD ε is also checked against bounds that share no code with the PLD
(an RDP upper bound, a hypothesis-test lower bound): outside them, the composition fails.

The replay composes within the same bounds as the ledger (:mod:`dpgov.accounting.bounded`):
a charge whose PLD would be too costly is refused in about a second, and reported as an ε
that cannot be computed, instead of costing the audit minutes and gigabytes.
"""

from __future__ import annotations

import bisect
import json
import math
import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpgov.accounting import (
    PLD_DISCRETIZATION,
    AccountantFailed,
    AccountingInputError,
    DpSgdMechanism,
    FedSiteMechanism,
    build_pld,
    check_pld_epsilon,
    get_accountant,
    mechanism_from_dict,
)
from dpgov.accounting.crosscheck import prepare as prepare_crosscheck
from dpgov.report.findings import Finding, finding

# A block's charges, merged: ((σ, q, neighbouring, total steps), ...) in a canonical order.
StateKey = tuple[tuple[float, float, str, int], ...]

BUDGET_KINDS = ("block_added", "block_retired", "reservation", "commit", "release", "abort")


@dataclass(frozen=True)
class RawEntry:
    """One row of the entries table as stored; ``payload`` is None when the stored text is
    not a JSON object (a corrupted or edited row)."""

    seq: int
    kind: str
    payload_text: str
    time: str
    actor: str
    prev_hash: str
    hash: str
    signature: str | None
    payload: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RawEntry:
        seq, kind, text, time, actor, prev, digest, signature = row
        try:
            payload = json.loads(text)
        except (TypeError, ValueError):
            payload = None
        if not isinstance(payload, dict):
            payload = None
        try:
            number = int(seq)
        except (TypeError, ValueError):
            number = -1
        return cls(
            number,
            str(kind),
            str(text),
            str(time),
            str(actor),
            str(prev),
            str(digest),
            None if signature is None else str(signature),
            payload,
        )


@dataclass
class BlockRecord:
    dataset: str
    block: str
    patients: int
    data_version: str | None
    seq: int
    time: str
    retired: bool = False
    retired_seq: int | None = None


@dataclass
class Charge:
    """One reservation rebuilt from its entries: what it charges, and to which blocks."""

    id: str
    seq: int
    time: str
    actor: str
    dataset: str
    blocks: tuple[str, ...]
    planned: DpSgdMechanism
    mechanism: DpSgdMechanism  # what is charged now (the committed one once committed)
    status: str = "pending"  # pending | committed | released | aborted
    closed_seq: int | None = None
    closed_time: str | None = None
    close_reason: str | None = None
    run_id: str | None = None
    data_version: str | None = None
    policy_sha256: str | None = None
    delta: float | None = None
    accountant: str | None = None
    epsilon_limit: float | None = None
    epsilon_run: float | None = None  # as recorded at reservation (planned mechanism)
    epsilon_after: dict[str, float] = field(default_factory=dict)  # as recorded, per block
    # the rule epsilon_after was enforced by (issue 16): "fixed" (the accountant's composition;
    # every entry before the rule existed), "adaptive" (the RDP filter over `orders`), "mixed"
    composition: str = "fixed"
    orders: tuple[float, ...] | None = None

    def mechanism_at(self, seq: int) -> DpSgdMechanism | None:
        """What this reservation charged just after entry ``seq`` (None: nothing)."""
        if seq < self.seq:
            return None
        if self.closed_seq is None or self.closed_seq > seq:
            return self.planned
        if self.status == "released":
            return None
        return self.mechanism if self.status == "committed" else self.planned

    @property
    def active(self) -> bool:
        return self.status in ("pending", "committed", "aborted")

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation": self.id,
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "dataset": self.dataset,
            "blocks": list(self.blocks),
            "status": self.status,
            "planned": self.planned.to_dict(),
            "mechanism": self.mechanism.to_dict(),
            "closed_seq": self.closed_seq,
            "closed_time": self.closed_time,
            "reason": self.close_reason,
            "run_id": self.run_id,
            "data_version": self.data_version,
            "policy_sha256": self.policy_sha256,
            "delta": self.delta,
            "accountant": self.accountant,
        }


@dataclass
class Replay:
    blocks: dict[tuple[str, str], BlockRecord] = field(default_factory=dict)
    charges: dict[str, Charge] = field(default_factory=dict)  # in ledger order
    problems: list[Finding] = field(default_factory=list)
    by_block: dict[tuple[str, str], list[Charge]] = field(default_factory=dict)
    head_seq: int = 0
    times: dict[int, str] = field(default_factory=dict, repr=False)  # seq → entry time
    _timelines: dict[tuple[str, str], tuple[list[int], list[StateKey]]] = field(
        default_factory=dict, repr=False
    )

    def block_mechanisms(
        self, dataset: str, block: str, at_seq: int | None = None
    ) -> list[DpSgdMechanism]:
        """Every mechanism charged to a block just after entry ``at_seq`` (default: now)."""
        at = self.head_seq if at_seq is None else at_seq
        out = []
        for c in self.by_block.get((dataset, block), []):
            m = c.mechanism_at(at)
            if m is not None:
                out.append(m)
        return out

    def state(self, dataset: str, block: str, at_seq: int | None = None) -> StateKey:
        """What a block is charged just after entry ``at_seq`` (default: now), merged."""
        seqs, keys = self._timeline(dataset, block)
        i = bisect.bisect_right(seqs, self.head_seq if at_seq is None else at_seq) - 1
        return keys[i] if i >= 0 else ()

    def change_seqs(self, dataset: str, block: str) -> list[int]:
        """Entries that changed what a block is charged, in order."""
        return list(self._timeline(dataset, block)[0])

    def _timeline(self, dataset: str, block: str) -> tuple[list[int], list[StateKey]]:
        """The block's merged state after each entry that changed it (built once: a walk
        over its charges, not a recomposition per entry)."""
        key = (dataset, block)
        if key not in self._timelines:
            events: dict[int, list[tuple[DpSgdMechanism, int]]] = {}
            for c in self.by_block.get(key, []):
                events.setdefault(c.seq, []).append((c.planned, 1))
                if c.closed_seq is not None:
                    after = c.mechanism_at(c.closed_seq)
                    if after != c.planned:
                        events.setdefault(c.closed_seq, []).append((c.planned, -1))
                        if after is not None:
                            events[c.closed_seq].append((after, 1))
            steps: dict[tuple[float, float, str], int] = {}
            seqs: list[int] = []
            keys: list[StateKey] = []
            for seq in sorted(events):
                for m, sign in events[seq]:
                    k = (m.noise_multiplier, m.sample_rate, m.neighbouring)
                    steps[k] = steps.get(k, 0) + sign * m.steps
                    if steps[k] == 0:
                        del steps[k]
                seqs.append(seq)
                keys.append(tuple(sorted((s, q, nb, n) for (s, q, nb), n in steps.items())))
            self._timelines[key] = (seqs, keys)
        return self._timelines[key]


def _text(p: dict[str, Any], key: str) -> str:
    value = p[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} is {value!r}, not a name")
    return value


def replay(entries: Iterable[RawEntry]) -> Replay:
    """Rebuild blocks and charges from the entries; every protocol violation is a finding."""
    r = Replay()
    for e in entries:
        r.head_seq = max(r.head_seq, e.seq)
        r.times[e.seq] = e.time
        if e.kind not in BUDGET_KINDS:
            continue
        if e.payload is None:
            r.problems.append(
                finding(
                    "row_corrupted",
                    f"entry {e.seq} ({e.kind}): payload is not a JSON object, so "
                    "what it changed cannot be rebuilt",
                    seq=e.seq,
                    time=e.time,
                )
            )
            continue
        try:
            _apply(r, e)
        except (KeyError, ValueError, TypeError, AccountingInputError) as err:
            what = f"lacks {err}" if isinstance(err, KeyError) else str(err)
            r.problems.append(
                finding(
                    "row_corrupted",
                    f"entry {e.seq} ({e.kind}): payload {what}",
                    seq=e.seq,
                    time=e.time,
                )
            )
    return r


def _bad(r: Replay, e: RawEntry, detail: str, **where: Any) -> None:
    r.problems.append(
        finding(
            "replay_inconsistent",
            f"entry {e.seq} ({e.kind}): {detail}",
            seq=e.seq,
            time=e.time,
            **where,
        )
    )


def _apply(r: Replay, e: RawEntry) -> None:
    p = e.payload or {}
    if e.kind == "block_added":
        key = (_text(p, "dataset"), _text(p, "block"))
        patients = p["patients"]
        if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
            raise ValueError(f"'patients' is {patients!r}, not a positive integer")
        if key in r.blocks:
            _bad(
                r,
                e,
                f"block {key[0]}/{key[1]} registered again (first at entry {r.blocks[key].seq})",
                dataset=key[0],
                block=key[1],
            )
            return
        version = p.get("data_version")
        r.blocks[key] = BlockRecord(
            key[0], key[1], patients, str(version) if version else None, e.seq, e.time
        )
        r.by_block.setdefault(key, [])
    elif e.kind == "block_retired":
        key = (_text(p, "dataset"), _text(p, "block"))
        rec = r.blocks.get(key)
        if rec is None:
            _bad(
                r,
                e,
                f"retires block {key[0]}/{key[1]}, which was never registered",
                dataset=key[0],
                block=key[1],
            )
        elif rec.retired:
            _bad(r, e, f"retires block {key[0]}/{key[1]} again", dataset=key[0], block=key[1])
        else:
            rec.retired, rec.retired_seq = True, e.seq
    elif e.kind == "reservation":
        _reserve(r, e, p)
    else:
        _close(r, e, p)


def _reserve(r: Replay, e: RawEntry, p: dict[str, Any]) -> None:
    rid, dataset = _text(p, "reservation"), _text(p, "dataset")
    blocks = p["blocks"]
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, str) for b in blocks):
        raise ValueError(f"'blocks' is {blocks!r}, not a list of block names")
    mech = mechanism_from_dict(p["mechanism"])
    if rid in r.charges:
        _bad(
            r,
            e,
            f"reservation id {rid} used again (first at entry {r.charges[rid].seq})",
            reservation=rid,
        )
        return
    for b in blocks:
        rec = r.blocks.get((dataset, b))
        if rec is None:
            _bad(
                r,
                e,
                f"charges block {dataset}/{b}, which was not registered before",
                reservation=rid,
                dataset=dataset,
                block=b,
            )
        elif rec.retired:
            _bad(
                r,
                e,
                f"charges block {dataset}/{b}, retired at entry {rec.retired_seq}",
                reservation=rid,
                dataset=dataset,
                block=b,
            )
    if len(set(blocks)) != len(blocks):
        _bad(r, e, f"names a block twice: {blocks}", reservation=rid)
    budget: dict[str, Any] = p["budget"] if isinstance(p.get("budget"), dict) else {}
    after: dict[str, Any] = p["epsilon_after"] if isinstance(p.get("epsilon_after"), dict) else {}
    charge = Charge(
        id=rid,
        seq=e.seq,
        time=e.time,
        actor=e.actor,
        dataset=dataset,
        blocks=tuple(dict.fromkeys(blocks)),
        planned=mech,
        mechanism=mech,
        run_id=_opt_str(p.get("run_id")),
        data_version=_opt_str(p.get("data_version")),
        policy_sha256=_opt_str(p.get("policy_sha256")),
        delta=_opt_float(budget.get("delta")),
        accountant=_opt_str(budget.get("accountant")),
        epsilon_limit=_opt_float(budget.get("epsilon_per_block")),
        epsilon_run=_opt_float(p.get("epsilon_run")),
        epsilon_after={
            str(k): v
            for k, v in after.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
        composition=_enforced(p.get("enforced")),
        orders=_orders(budget.get("orders")),
    )
    r.charges[rid] = charge
    for b in charge.blocks:
        r.by_block.setdefault((dataset, b), []).append(charge)


def _enforced(value: Any) -> str:
    """The rule a reservation entry says it enforced (``enforced``: the modes of the classes
    it reached); entries written before the rule existed enforced the accountant's figure."""
    if value == ["adaptive"]:
        return "adaptive"
    if isinstance(value, list) and len(value) > 1:
        return "mixed"
    return "fixed"


def _orders(value: Any) -> tuple[float, ...] | None:
    if (
        isinstance(value, list)
        and value
        and all(isinstance(a, int | float) and not isinstance(a, bool) for a in value)
    ):
        return tuple(float(a) for a in value)
    return None


def _close(r: Replay, e: RawEntry, p: dict[str, Any]) -> None:
    rid = _text(p, "reservation")
    charge = r.charges.get(rid)
    if charge is None:
        _bad(r, e, f"closes reservation {rid}, which was never made", reservation=rid)
        return
    if charge.status != "pending":
        _bad(
            r,
            e,
            f"closes reservation {rid} again: it was {charge.status} at entry {charge.closed_seq}",
            reservation=rid,
        )
        return
    if e.kind == "commit":
        mech = mechanism_from_dict(p["mechanism"])
        steps = p.get("steps", mech.steps)
        if mech != charge.planned.with_steps(mech.steps):
            _bad(
                r,
                e,
                f"commits a mechanism (σ={mech.noise_multiplier:g}, "
                f"q={mech.sample_rate:g}) other than the one reserved "
                f"(σ={charge.planned.noise_multiplier:g}, q={charge.planned.sample_rate:g})",
                reservation=rid,
            )
        if mech.steps > charge.planned.steps:
            _bad(
                r,
                e,
                f"commits {mech.steps} steps, more than the {charge.planned.steps} reserved",
                reservation=rid,
            )
        if steps != mech.steps:
            _bad(r, e, f"says {steps} steps but its mechanism holds {mech.steps}", reservation=rid)
        charge.mechanism, charge.status = mech, "committed"
        charge.run_id = _opt_str(p.get("run_id")) or charge.run_id
    else:
        charge.status = "released" if e.kind == "release" else "aborted"
        charge.close_reason = _opt_str(p.get("reason"))
    charge.closed_seq, charge.closed_time = e.seq, e.time


def _opt_str(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None


def _opt_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# ---------------------------------------------------------------------------------- epsilon


def merge_key(mechanisms: Iterable[DpSgdMechanism]) -> StateKey:
    """One entry per distinct (σ, q, neighbouring) with the sum of the steps: the same
    composition (see the module docstring), with far fewer self-compositions."""
    steps: dict[tuple[float, float, str], int] = {}
    for m in mechanisms:
        key = (m.noise_multiplier, m.sample_rate, m.neighbouring)
        steps[key] = steps.get(key, 0) + m.steps
    return tuple(sorted((s, q, nb, n) for (s, q, nb), n in steps.items()))


def key_mechanisms(key: StateKey) -> list[Any]:
    return [key_mechanism(s, q, nb, n) for s, q, nb, n in key]


# A merge key names its kind by the neighbouring relation, one relation per registered kind:
# DP-SGD's add/remove, site-level DP-FedAvg's replace-one (docs/federated_accounting.md).
_KIND_OF_NEIGHBOURING: dict[str, type] = {
    "add_remove": DpSgdMechanism,
    "replace_one": FedSiteMechanism,
}


def key_mechanism(sigma: float, q: float, neighbouring: str, steps: int) -> Any:
    """The mechanism a merge-key entry stands for (an unknown relation is refused, so the
    audit reports the block's ε as uncomputable instead of guessing what it charged)."""
    cls = _KIND_OF_NEIGHBOURING.get(neighbouring, DpSgdMechanism)
    return cls(noise_multiplier=sigma, sample_rate=q, steps=steps, neighbouring=neighbouring)


def merge_steps(mechanisms: Iterable[DpSgdMechanism]) -> list[DpSgdMechanism]:
    return key_mechanisms(merge_key(mechanisms))


def compose_epsilon(key: StateKey, delta: float, accountant: str) -> float:
    """ε at ``delta`` of the merged multiset ``key``, composed from nothing with the
    accountant ``dpgov.accounting`` names. For PLD that is the ledger's own builder
    (:func:`dpgov.accounting.build_pld`: the same discretisation, pessimistic estimates and
    tail truncation; each (σ, q) step is built once per process and shared by every block
    charged at it), and the result is cross-checked (:func:`dpgov.accounting.check_pld_epsilon`):
    a PLD ε above the RDP upper bound or below the test's lower bound raises
    :class:`~dpgov.accounting.AccountantFailed`, which the audit reports."""
    if not key:
        return 0.0
    acc = get_accountant(accountant)
    mechanisms = key_mechanisms(key)
    state = acc.empty()
    for m in mechanisms:
        state = acc.add(state, m)
    eps = float(acc.epsilon(state, delta))
    if accountant == "pld":
        check_pld_epsilon(mechanisms, delta=delta, epsilon=eps)
    return eps


def _compose_task(task: tuple[StateKey, float, str]) -> float | None:
    try:
        return compose_epsilon(*task)
    except Exception:  # the parent recomposes it and reports the error itself
        return None


def _cost(key: StateKey) -> float:
    """A rough cost of composing ``key`` (wide privacy-loss supports are slow)."""
    return sum(n * q / s for s, q, _, n in key)


class Epsilons:
    """ε of a multiset of mechanisms at (δ, accountant), composed from scratch and memoised
    by the merged multiset (blocks charged by the same runs share one computation).

    :meth:`prefetch` composes many at once, in worker processes when the machine has more
    than one core (``DPGOV_AUDIT_WORKERS`` caps them; 1 keeps everything in-process)."""

    def __init__(self, workers: int | None = None) -> None:
        self._cache: dict[tuple[str, float, StateKey], float] = {}
        self._pending: Any = None
        self.computed = 0
        env = os.environ.get("DPGOV_AUDIT_WORKERS", "")
        self.workers = (
            workers
            or (int(env) if env.isdigit() and int(env) > 0 else None)
            or (os.cpu_count() or 1)
        )

    def of(self, mechanisms: Iterable[DpSgdMechanism], *, delta: float, accountant: str) -> float:
        return self.of_key(merge_key(mechanisms), delta=delta, accountant=accountant)

    def of_key(self, key: StateKey, *, delta: float, accountant: str) -> float:
        self._collect()
        if not key:
            return 0.0
        k = (accountant, delta, key)
        if k not in self._cache:
            self._cache[k] = compose_epsilon(key, delta, accountant)
            self.computed += 1
        return self._cache[k]

    def known(self, key: StateKey, *, delta: float, accountant: str) -> float | None:
        """The ε of ``key`` if it was composed already (no work)."""
        self._collect()
        return 0.0 if not key else self._cache.get((accountant, delta, key))

    def start(self, requests: Iterable[tuple[StateKey, float, str]]) -> None:
        """Begin composing ``requests`` in worker processes and return at once (the caller
        reads the tracking store meanwhile); results are collected on first use."""
        self._pending = self._submit(self._todo(requests))

    def _collect(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pool, jobs = pending
        try:
            for (key, delta, acc), job in jobs:
                value = job.result()
                if value is not None:
                    self._cache[(acc, delta, key)] = value
                    self.computed += 1
        finally:
            pool.shutdown()

    def _todo(
        self, requests: Iterable[tuple[StateKey, float, str]]
    ) -> list[tuple[StateKey, float, str]]:
        return sorted(
            {
                (key, delta, acc)
                for key, delta, acc in requests
                if key and (acc, delta, key) not in self._cache
            },
            key=lambda t: -_cost(t[0]),
        )

    def _submit(self, todo: list[tuple[StateKey, float, str]]) -> Any:
        workers = min(self.workers, len(todo))
        if workers < 2 or len(todo) < 4 or "fork" not in mp.get_all_start_methods():
            return None  # composed on demand by of_key
        from concurrent.futures import ProcessPoolExecutor

        steps = [
            key_mechanism(s, q, nb, 1)
            for s, q, nb in sorted(
                {(s, q, nb) for key, _, a in todo if a == "pld" for s, q, nb, _ in key}
            )
        ]
        for one in steps:  # built once here, inherited by the workers
            try:  # bounded: a step too costly to build is refused again, and reported, by of_key
                build_pld(one, discretization=PLD_DISCRETIZATION)
                prepare_crosscheck([one])
            except (AccountantFailed, ValueError):
                continue
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))
        return pool, [(t, pool.submit(_compose_task, t)) for t in todo]

    def prefetch(self, requests: Iterable[tuple[StateKey, float, str]]) -> None:
        """Compose every request not composed yet, in parallel where possible, and wait.
        Failures are left for :meth:`of_key` to raise where the caller handles them."""
        self._collect()
        self._pending = self._submit(self._todo(requests))
        self._collect()


def close_enough(a: float, b: float, *, rel: float = 1e-4, abs_: float = 1e-6) -> bool:
    """Two ε computed along different composition paths agree (PLD discretisation and float
    rounding differ in the last digits, never in the fourth significant one)."""
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))
