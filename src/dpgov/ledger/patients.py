"""Per-patient accounting on the ledger's store (issue 15): membership operations, each
block's worst-class budget, the classes, one patient's history, the membership audit.

A charge to a block is a charge to each of its members; a block's spent ε is the largest over
the history classes among its members of the composition of that class's charges
(:mod:`dpgov.ledger.classes`, docs/composition.md "History classes"). Everything here reads
the state rebuilt from the chained entries and membership checked against the chained digests
(:mod:`dpgov.ledger.membership`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from dpgov import names
from dpgov.accounting import rdp_vector
from dpgov.accounting.accountants import quiet_absl
from dpgov.accounting.filters import FILTER_ORDERS, filter_epsilon
from dpgov.errors import UsageError
from dpgov.ledger import classes, integrity, membership
from dpgov.ledger.appending import append_entry
from dpgov.ledger.chain import Entry
from dpgov.ledger.classes import DomainView, HClass, Structure
from dpgov.ledger.composition import accountant_key, digest
from dpgov.ledger.members_state import BlockKey
from dpgov.ledger.membership import MembershipProblem
from dpgov.ledger.records import (
    BlockStatus,
    PatientBlock,
    PatientCharge,
    PatientClass,
    PatientHistory,
)
from dpgov.ledger.schema import ACTIVE
from dpgov.ledger.store import LedgerStore
from dpgov.ledger.verified import Multiset, VerifiedState
from dpgov.policy.schema import Budget

FIXED, ADAPTIVE = "fixed", "adaptive"


def composition_of(accountant: str) -> str:
    """The composition an accountant's ε is valid for on its own: PLD and PRV compose a fixed
    schedule tightly; dp_accounting's RDP accountant composes under full adaptivity too, but
    what the ledger enforces is ``budget.composition`` (:meth:`Budget.mode_for`)."""
    return ADAPTIVE if accountant == "rdp" else FIXED


class PatientStore(LedgerStore):
    """The store with per-patient accounting; :class:`dpgov.ledger.Ledger` extends it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._structures: dict[str, Structure] = {}
        # (mechanism, count, Λ) -> RDP vector at the orders of Λ
        self._rdp: dict[tuple[Any, int, tuple[float, ...]], list[float]] = {}
        # (multiset digest, accountant key, δ) -> ε, composed or read in this process
        self._eps_memo: dict[tuple[str, str, float], float] = {}

    # ------------------------------------------------------------------ classes
    def _views(
        self, conn: Connection, st: VerifiedState, keys: Sequence[BlockKey]
    ) -> dict[str, tuple[DomainView, bool]]:
        return classes.views(conn, st, classes.domains_of(st, keys), self._structures)

    def _class_epsilons(
        self,
        conn: Connection,
        st: VerifiedState,
        found: Sequence[HClass],
        accountant: str,
        delta: float,
    ) -> dict[str, float]:
        """ε of each class (by class key) under ``accountant`` at ``delta``."""
        acc = self._acc(accountant)
        acc_key = accountant_key(acc)
        comp = classes.Composer(conn, st, acc)
        sealed = st.members.epsilons
        out: dict[str, float] = {}
        for c in found:
            multiset = classes.class_multiset(st, c)
            if not multiset:
                out[c.key] = 0.0
                continue
            k = (digest(multiset), acc_key, float(delta))
            if k not in self._eps_memo:  # ε is a function of the multiset: memoised safely
                eps = sealed.get(k)  # as the entry that composed it recorded
                if eps is None:
                    eps = self._epsilon(acc, comp.state(c, multiset)[0], delta)
                self._eps_memo[k] = eps
            out[c.key] = self._eps_memo[k]
        return out

    def _rdp_of(self, multiset: Multiset, orders: Sequence[float]) -> list[float]:
        """The summed RDP vector over ``orders`` of a multiset of charges (each (mechanism,
        count)'s vector cached: RDP is additive under composition, adaptive or not)."""
        total = [0.0] * len(orders)
        grid = tuple(orders)
        for mech, n in multiset:
            k = (mech, n, grid)
            if k not in self._rdp:
                with quiet_absl():  # "failed to converge" at small σ: that order is excluded
                    self._rdp[k] = rdp_vector(mech, grid, n)
            total = [a + b for a, b in zip(total, self._rdp[k], strict=True)]
        return total

    def _read_rdp_of(
        self, st: VerifiedState, multiset: Multiset, orders: Sequence[float]
    ) -> list[float]:
        """:meth:`_rdp_of` for reads: the vector a chained entry recorded for this multiset at
        these orders (``class_rdp``, computed by :meth:`_rdp_of` when it charged the class:
        the same floats), else computed. Reservations and calibration call :meth:`_rdp_of`
        itself: enforcement never takes a recorded vector."""
        sealed = st.members.rdp.get((digest(multiset), tuple(float(a) for a in orders)))
        if sealed is not None:
            return list(sealed)
        return self._rdp_of(multiset, orders)

    def _adaptive_epsilons(
        self,
        st: VerifiedState,
        found: Sequence[HClass],
        delta: float,
        orders: Sequence[float] = FILTER_ORDERS,
    ) -> dict[str, float]:
        """Each class's ε under the RDP filter over ``orders`` (Λ; valid under full
        adaptivity: Feldman and Zrnic 2021, Thm 3.1; docs/composition.md), from the RDP
        vectors the chain records where it records them (:meth:`_read_rdp_of`)."""
        out: dict[str, float] = {}
        memo: dict[str, float] = {}
        for c in found:
            multiset = classes.class_multiset(st, c)
            if not multiset:
                out[c.key] = 0.0
                continue
            d = digest(multiset)
            if d not in memo:
                memo[d] = filter_epsilon(self._read_rdp_of(st, multiset, orders), delta, orders)
            out[c.key] = memo[d]
        return out

    def _enforced_epsilons(
        self, conn: Connection, st: VerifiedState, found: Sequence[HClass], budget: Budget
    ) -> dict[str, float]:
        """Each class's enforced ε: the RDP filter's for a domain under ``adaptive``, the
        accountant's for one under ``fixed`` (``budget.mode_for``)."""
        fixed = [c for c in found if budget.mode_for(c.domain) == FIXED]
        adaptive = [c for c in found if budget.mode_for(c.domain) != FIXED]
        out = self._class_epsilons(conn, st, fixed, budget.accountant, budget.delta)
        out.update(self._adaptive_epsilons(st, adaptive, budget.delta, budget.orders))
        return out

    def budget(
        self, budget: Budget, dataset: str | None = None, blocks: Sequence[str] | None = None
    ) -> list[BlockStatus]:
        """Status of every block (of one dataset, or the named blocks of it): the ε of the
        worst history class among its members under the policy's accountant
        (``epsilon_spent_fixed``: tight for a schedule fixed in advance) and under the RDP
        filter over ``budget.orders`` (``epsilon_spent_adaptive``: valid under full
        adaptivity); ``epsilon_spent`` is the one the block's domain enforces
        (``budget.mode_for``). Reads only: nothing composed is cached."""
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
            keys = [(r.dataset, r.block) for r in rows]
            vs = self._views(conn, st, keys)
            per_block = {k: [c for v, _ in vs.values() for c in v.of_block(k)] for k in keys}
            wanted = list({c.key: c for cs in per_block.values() for c in cs}.values())
            eps: dict[str, dict[str, float]] = {
                name: self._class_epsilons(conn, st, wanted, name, budget.delta)
                for name in (budget.accountant,)
            }
            eps[ADAPTIVE] = self._adaptive_epsilons(st, wanted, budget.delta, budget.orders)
        out = []
        for row, k in zip(rows, keys, strict=True):
            _, n_charges, pending = st.multiset(*k)
            cs = per_block[k]
            m = st.members.of(k)

            def worst(name: str, cs: list[HClass] = cs) -> float:
                return max((eps[name][c.key] for c in cs), default=0.0)

            mode = budget.mode_for(m.domain)

            out.append(
                BlockStatus(
                    dataset=row.dataset,
                    block=row.block,
                    patients=row.patients,
                    retired=row.retired,
                    epsilon_spent=worst(ADAPTIVE if mode == ADAPTIVE else budget.accountant),
                    epsilon_limit=budget.epsilon_per_block,
                    delta=budget.delta,
                    accountant=budget.accountant,
                    charges=n_charges,
                    pending=pending,
                    domain=m.domain,
                    split=m.split,
                    classes=sum(1 for c in cs if c.count > 0),
                    epsilon_spent_fixed=worst(budget.accountant),
                    epsilon_spent_adaptive=worst(ADAPTIVE),
                    composition=mode,
                    members=m.digest is not None,
                )
            )
        return out

    def patient_classes(self, budget: Budget, dataset: str | None = None) -> list[PatientClass]:
        """Every history class (of the domains of one dataset's blocks, or all), with its
        patients, the reservations that reached them and their composed ε."""
        with self._read() as conn:
            st = self._state(conn)
            if dataset is not None:
                st.check_dataset(dataset)
            keys = [(b.dataset, b.block) for b in st.blocks_of(dataset)]
            vs = self._views(conn, st, keys)
            found = [c for v, _ in vs.values() for c in v.classes if c.count > 0]
            eps = self._enforced_epsilons(conn, st, found, budget)
        return [
            PatientClass(
                domain=c.domain,
                count=c.count,
                reservations=classes.reservations_of(st, c),
                epsilon=eps[c.key],
                blocks=list(c.blocks),
                legacy=c.legacy,
            )
            for c in found
        ]

    def seal_classes(self, actor: str | None = None) -> Entry | None:
        """Compute and seal the class structure of every domain whose structure no entry
        seals yet (one ``classes_sealed`` entry; None when all are sealed), so that the next
        reservation and ``dpgov budget`` need not recompute it from the membership. Call after
        registering a batch of blocks (``dpgov data prepare``). Computed outside the lock; a
        domain whose membership changed meanwhile is left unsealed."""
        names.storable(actor=actor)
        with self._read() as conn:
            st = self._state(conn)
            todo = {}
            for d in st.members.domains():
                key = classes.structure_key(d, st.members)
                if key not in st.members.structure_seals:
                    todo[d] = (
                        key,
                        classes.load_structure(conn, st.members, d, self._structures)[0],
                    )
        if not todo:
            return None
        with self._write() as conn:
            st = self._state(conn)
            fresh = [
                d
                for d, (key, _) in todo.items()
                if classes.structure_key(d, st.members) == key
                and key not in st.members.structure_seals
            ]
            if not fresh:
                return None
            seals = [classes.store_structure(conn, *todo[d]) for d in fresh]
            return append_entry(
                conn, "classes_sealed", {"domains": fresh, "class_structure": seals}, actor
            )

    # ------------------------------------------------------------------ membership
    def attach_members(
        self,
        *,
        dataset: str,
        block: str,
        members: Sequence[str],
        data_version: str | None,
        actor: str | None = None,
        domain: str | None = None,
    ) -> Entry:
        """Attach the members of a block registered without them (an existing ledger): the
        data version must be the block's, the distinct count its patients. ``domain`` (default:
        the block's, i.e. its dataset) is the id domain of the pseudonyms: a block registered
        before its dataset declared one joins it here."""
        names.storable(dataset=dataset, block=block, data_version=data_version, actor=actor)
        if domain is not None:
            names.name(domain, argument="domain")
        blob = membership.pack(members)
        with self._write() as conn:
            st = self._state(conn)
            known = st.block(dataset, block)
            integrity.guard(conn, st, dataset, [block])
            m = st.members.of((dataset, block))
            where = f"block {block!r} of dataset {dataset!r}"
            if m.digest is not None:
                if m.digest == membership.digest(blob):
                    raise UsageError(f"{where} already has these members (entry {m.seq})")
                raise UsageError(f"{where} already has other members (entry {m.seq})")
            if data_version != known.data_version:
                raise UsageError(
                    f"{where} was registered from data version {known.data_version!r}, not "
                    f"{data_version!r}: attach the members of the data it was registered from"
                )
            if membership.count(blob) != known.patients:
                raise UsageError(
                    f"{where}: {membership.count(blob)} distinct members, not the "
                    f"{known.patients} patients it is registered with"
                )
            entry = append_entry(
                conn,
                "members_attached",
                {
                    "dataset": dataset,
                    "block": block,
                    "data_version": data_version,
                    "patients": known.patients,
                    "members_digest": membership.digest(blob),
                    "domain": domain or m.domain,
                },
                actor,
            )
            membership.write(conn, (dataset, block), domain or m.domain, blob)
            return entry

    def erase_member(
        self, *, domain: str, pseudonym: str, reason: str, actor: str | None = None
    ) -> Entry:
        """Erase one pseudonym from every block's membership of ``domain`` (an erasure entry
        records the new digests and the SHA-256 of the pseudonym, never the pseudonym). Every
        charge stays: what was spent on the patient's data was spent."""
        names.storable(actor=actor)
        names.name(domain, argument="domain")
        packed = membership.pack_one(pseudonym)
        if not isinstance(reason, str) or not reason.strip():
            raise UsageError("an erasure needs a reason")
        with self._write() as conn:
            st = self._state(conn)
            ms = st.members
            keys = ms.domain_blocks(domain)
            if not keys:
                raise UsageError(f"unknown domain {domain!r}")
            blobs = membership.read(conn, ms, keys)
            changed: list[tuple[BlockKey, bytes]] = []
            for k in sorted(blobs):
                after = membership.remove(blobs[k], packed)
                if after is not None:
                    changed.append((k, after))
            if not changed:
                raise UsageError(f"pseudonym {pseudonym} is in no block of domain {domain!r}")
            entry = append_entry(
                conn,
                "member_erased",
                {
                    "domain": domain,
                    "pseudonym_sha256": membership.pseudonym_sha256(pseudonym),
                    "reason": reason,
                    "blocks": [
                        {
                            "dataset": k[0],
                            "block": k[1],
                            "members": membership.count(blob),
                            "members_digest": membership.digest(blob),
                        }
                        for k, blob in changed
                    ],
                },
                actor,
            )
            for k, blob in changed:
                membership.write(conn, k, domain, blob)
            return entry

    def pseudonym_key(self, fingerprint: str, actor: str | None = None) -> None:
        """Record the deployment's pseudonym key fingerprint (first call); refuse a different
        one later, writing nothing (it would silently break the linkage of patients)."""
        names.storable(actor=actor)
        if not isinstance(fingerprint, str) or not fingerprint.strip() or len(fingerprint) > 200:
            raise UsageError(f"a key fingerprint must be a short text, found {fingerprint!r}")
        with self._read() as conn:
            if self._check_key(self._state(conn), fingerprint):
                return
        with self._write() as conn:
            if self._check_key(self._state(conn), fingerprint):
                return
            append_entry(conn, "pseudonym_key", {"fingerprint": fingerprint}, actor)

    @staticmethod
    def _check_key(st: VerifiedState, fingerprint: str) -> bool:
        """True when the ledger has this fingerprint; UsageError when it has another."""
        if st.members.key is None:
            return False
        recorded, seq = st.members.key
        if recorded != fingerprint:
            raise UsageError(
                f"the pseudonym key differs from the one this ledger recorded at entry {seq} "
                f"(fingerprint {recorded}); set DPGOV_PSEUDONYM_KEY or restore "
                f"$DPGOV_HOME/pseudonym.key"
            )
        return True

    def verify_membership(self) -> list[MembershipProblem]:
        """Every block whose stored membership does not match the chain (digests
        recomputed from the stored pseudonyms)."""
        with self._read() as conn:
            return membership.problems(conn, self._state(conn).members)

    # ------------------------------------------------------------------ one patient
    def patient_history(
        self,
        pseudonym: str,
        *,
        domain: str | None = None,
        actor: str | None = None,
        budget: Budget | None = None,
    ) -> PatientHistory | None:
        """One patient's history (None: in no block). Records a ``patient_lookup`` entry
        (who, when, the SHA-256 of the pseudonym, found or not) either way. ε is composed
        under ``budget``'s accountant at its δ (default: PLD at δ = 1e-5)."""
        names.storable(actor=actor)
        if domain is not None:
            names.name(domain, argument="domain")
        packed = membership.pack_one(pseudonym)
        budget = budget or Budget(epsilon_per_block=100, delta=1e-5)
        history = None
        with self._read() as conn:
            st = self._state(conn)
            ms = st.members
            domains = [domain] if domain is not None else ms.domains()
            holding: dict[str, list[BlockKey]] = {}
            for d in domains:
                blobs = membership.read(conn, ms, ms.domain_blocks(d))
                hit = [k for k in sorted(blobs) if membership.contains(blobs[k], packed)]
                if hit:
                    holding[d] = hit
            if len(holding) > 1:
                raise UsageError(
                    f"pseudonym {pseudonym} is in domains {', '.join(sorted(holding))}: "
                    f"name one (--domain)"
                )
            if holding:
                ((d, keys),) = holding.items()
                history = self._history(conn, st, pseudonym, d, keys, budget)
        with self._write() as conn:
            append_entry(
                conn,
                "patient_lookup",
                {
                    "pseudonym_sha256": membership.pseudonym_sha256(pseudonym),
                    "domain": history.domain if history else domain,
                    "found": history is not None,
                },
                actor,
            )
        return history

    def _history(
        self,
        conn: Connection,
        st: VerifiedState,
        pseudonym: str,
        domain: str,
        keys: list[BlockKey],
        budget: Budget,
    ) -> PatientHistory:
        legacy = tuple(st.members.legacy_of(domain))
        reach = tuple(sorted({*keys, *legacy}))
        cls = HClass(classes.class_key(domain, tuple(keys)), domain, tuple(keys), reach, 1)
        charged: dict[str, BlockKey] = {}
        for k in reach:
            for rid in st.charges.get(k, []):
                charged.setdefault(rid, k)
        charges = [
            PatientCharge(
                seq=r.seq,
                reservation=r.id,
                dataset=charged[r.id][0],
                block=charged[r.id][1],
                run_id=r.run_id,
                mechanism=r.mechanism.to_dict(),
                status=r.status,
            )
            for r in sorted((st.reservations[rid] for rid in charged), key=lambda r: r.seq)
        ]
        eps = 0.0
        if any(r.status in ACTIVE for r in (st.reservations[rid] for rid in charged)):
            eps = self._enforced_epsilons(conn, st, [cls], budget)[cls.key]
        blocks = [
            PatientBlock(k[0], k[1], st.blocks[k].data_version, st.members.of(k).split)
            for k in keys
        ]
        return PatientHistory(
            pseudonym=pseudonym,
            domain=domain,
            epsilon=eps,
            delta=budget.delta,
            composition=budget.mode_for(domain),
            charges=charges,
            blocks=blocks,
        )


__all__ = ["ADAPTIVE", "FIXED", "PatientStore", "composition_of"]
