"""Each site's privacy ledger in a federated round, and the patients two sites share.

Why a layer of its own: a federated round is several reservations on several ledgers that
must behave as one decision. Each site keeps its own ledger (SQLite or PostgreSQL, its own
hash chain, its own policy in force) and charges only its own training blocks: the rounds of
two sites reach disjoint data, so they compose in parallel across sites and sequentially
across rounds (record-level DP at each site; docs/federated.md). The engine's protocol per
round is: :meth:`SiteLedgers.reserve_round` before the round, :meth:`~SiteLedgers.commit_round`
after aggregation, :meth:`~SiteLedgers.release_round` for a site that never trained,
:meth:`~SiteLedgers.abort_round` for one that crashed mid-round (it stays charged).

Shared patients. Sites of one id domain share its pseudonym key, so a patient seen at two of
them has the same pseudonym at both and is charged at *both* ledgers (each site charges its own
blocks). Each ledger alone cannot see what the other charged, so before a round reserves, every
patient this round reaches who is held at two or more of the domain's ledgers has their charges
composed from *every* ledger of the domain, read-only (the verified state of each chain; no
``patient_lookup`` entry is written: this is enforcement, not a look-up), together with this
round's planned mechanisms at every site whose training blocks hold them. The composition is
the one the policy enforces for the domain (``budget.mode_for``): ``adaptive``, the RDP filter
over the policy's orders (Feldman and Zrnic 2021, Thm 3.1; RDP adds across any adaptively
chosen sequence, so adding the vectors of charges recorded on different ledgers is valid);
``fixed``, the policy's tight accountant (PLD by default) of the whole multiset, valid only
when every site's schedule was fixed in advance (docs/composition.md). A patient who would
pass the limit of any site that holds them makes every planned site holding them refuse the
round; the reason counts such patients and never names one.

What this does not do: there is no lock across ledgers. Two federated runs reserving on the
same sites at the same moment could each pass the shared check before the other's charges
land; each ledger's own check still holds for its own charges. One engine per id domain at a
time is the supported use (the coordinator runs rounds one after the other).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpgov.accounting import AccountantFailed, group, rdp_vector
from dpgov.accounting import epsilon as tight_epsilon
from dpgov.accounting.accountants import quiet_absl
from dpgov.accounting.filters import filter_epsilon
from dpgov.errors import Refused, UsageError
from dpgov.federated.types import OpenSite, SiteCharge
from dpgov.ledger import Ledger, membership
from dpgov.ledger.classes import HClass, class_key, class_multiset, structure_key
from dpgov.ledger.patients import FIXED
from dpgov.ledger.verified import BlockKey, Multiset, VerifiedState
from dpgov.policy.schema import Budget

Packed = bytes  # one pseudonym, as the ledger packs it (10 bytes)


def _unpack(blob: bytes) -> set[Packed]:
    w = membership.WIDTH
    return {bytes(blob[i : i + w]) for i in range(0, len(blob), w)}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class _LedgerRead:
    """One read of one ledger for one id domain: the verified state (its charges and
    reservations, in memory), where each of the domain's patients is held, and the domain's
    blocks without members (they reach every patient of the domain, conservatively)."""

    state: VerifiedState
    where: Mapping[Packed, tuple[BlockKey, ...]]
    legacy: tuple[BlockKey, ...]
    memo: dict[tuple[BlockKey, ...], Multiset] = field(default_factory=dict)

    def history(self, domain: str, patient: Packed) -> Multiset:
        """The active charges that reached ``patient`` on this ledger (as the ledger's own
        history classes compose them: each reservation once, however many of its blocks hold
        the patient). Patients held by the same blocks share one history."""
        keys = self.where.get(patient, ())
        if not keys and not self.legacy:
            return []
        if keys not in self.memo:
            reach = tuple(sorted({*keys, *self.legacy}))
            cls = HClass(class_key(domain, keys), domain, keys, reach, 1)
            self.memo[keys] = class_multiset(self.state, cls)
        return self.memo[keys]


class SiteLedgers:
    """The ledgers of a federated run's sites: per-site reservations and the shared check."""

    def __init__(self, sites: Sequence[OpenSite], *, run_tag: str) -> None:
        if not sites:
            raise UsageError("a federated run needs at least one site")
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise UsageError(f"site named twice in {names!r}")
        if not isinstance(run_tag, str) or not run_tag.strip() or len(run_tag) > 120:
            raise UsageError(f"run_tag must be a short non-empty name, found {run_tag!r}")
        for s in sites:
            missing = [b for b in s.blocks if b not in s.block_patients or b not in s.block_members]
            if not s.blocks or missing:
                raise UsageError(
                    f"site {s.name!r}: every training block needs its patients and members "
                    f"(missing for {missing or 'no blocks at all'})"
                )
        self.sites = list(sites)
        self.run_tag = run_tag
        self._by_name = {s.name: s for s in sites}
        self._registered: set[str] = set()
        self._members: dict[str, frozenset[Packed]] = {}
        # (ledger, domain, structure key) -> where each patient of the domain is held
        self._where: dict[tuple[str, str, str], dict[Packed, tuple[BlockKey, ...]]] = {}
        self._eps_memo: dict[tuple[Any, ...], float] = {}

    # ------------------------------------------------------------------ sites
    def site(self, name: str) -> OpenSite:
        try:
            return self._by_name[name]
        except KeyError:
            raise UsageError(f"unknown site {name!r} (sites: {', '.join(self._by_name)})") from None

    @staticmethod
    def _ledger_id(ledger: Ledger) -> str:
        """Which database a ledger is (two sites may point at one: read it once)."""
        return ledger.engine.url.render_as_string(hide_password=True)

    def _members_of(self, site: OpenSite) -> frozenset[Packed]:
        """The pseudonyms of the site's training blocks, packed as the ledger packs them."""
        if site.name not in self._members:
            found: set[Packed] = set()
            for b in site.blocks:
                found |= _unpack(membership.pack(site.block_members[b], what=f"block {b!r}"))
            self._members[site.name] = frozenset(found)
        return self._members[site.name]

    def _domains(self) -> dict[str, list[OpenSite]]:
        out: dict[str, list[OpenSite]] = {}
        for s in self.sites:
            out.setdefault(s.domain, []).append(s)
        return out

    def register(self, sites: Sequence[str] | None = None) -> None:
        """Register the training blocks of ``sites`` (default: all) on each one's own ledger,
        with their members, id domain and data version (idempotent; a block registered with
        other facts is refused by the ledger, :class:`UsageError`, before anything is
        charged). :meth:`reserve_round` registers the sites it plans; a fixed-composition run
        registers all first, to commit each site's schedule (``Ledger.plan_schedule``)."""
        for s in self.sites if sites is None else [self.site(n) for n in sites]:
            if s.name in self._registered:
                continue
            for b in s.blocks:
                s.ledger.add_block(
                    dataset=s.dataset,
                    block=b,
                    patients=s.block_patients[b],
                    data_version=s.data_version,
                    members=s.block_members[b],
                    domain=s.domain,
                    split="train",
                )
            self._registered.add(s.name)

    # ------------------------------------------------------------------ rounds
    def _run_id(self, rnd: int, site: str) -> str:
        """What every reservation of the run names: the federation's MLflow run (``run_tag``),
        so ``dpgov audit`` on a site ledger finds the run each charge paid for."""
        return self.run_tag

    def reserve_round(self, rnd: int, planned: Mapping[str, Any]) -> dict[str, SiteCharge]:
        """Reserve this round's mechanism at each planned site, on that site's ledger only
        (all its training blocks, atomically, under the budget of its policy in force). A site
        that refuses (its own ledger, or the shared check) gets ``SiteCharge.refused``, a
        one-line reason, and nothing is charged there; the others are reserved. An error that
        is not a refusal (a ledger that does not answer, bad input) releases what this call
        reserved and is raised: a round that cannot start leaves nothing pending."""
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1:
            raise UsageError(f"round must be an integer >= 1, found {rnd!r}")
        for name in planned:
            self.site(name)
        if not planned:
            return {}
        self.register(list(planned))
        refused = self._shared_refusals(planned)
        charges: dict[str, SiteCharge] = {}
        try:
            for name, mech in planned.items():
                s = self._by_name[name]
                blocks = tuple(s.blocks)
                if name in refused:
                    charges[name] = SiteCharge(name, mech, blocks, refused=refused[name])
                    continue
                try:
                    r = s.ledger.reserve(
                        dataset=s.dataset,
                        blocks=list(blocks),
                        mechanism=mech,
                        budget=s.policy.policy.budget,
                        policy_sha256=s.policy.sha256,
                        run_id=self._run_id(rnd, name),
                        data_version=s.data_version,
                    )
                except Refused as err:  # BudgetExceeded, a fixed-mode run outside a schedule
                    charges[name] = SiteCharge(name, mech, blocks, refused=_one_line(err))
                    continue
                charges[name] = SiteCharge(name, mech, blocks, reservation=r.id)
        except BaseException:
            self._each(charges, lambda led, rid: led.release(rid, reason="round never started"))
            raise
        return charges

    def _each(self, charges: Mapping[str, SiteCharge], close: Callable[[Ledger, str], Any]) -> None:
        """Close every reserved charge (every one is tried; the first error is raised)."""
        first: BaseException | None = None
        for name, c in charges.items():
            if c.reservation is None:
                continue
            try:
                close(self.site(name).ledger, c.reservation)
            except Exception as err:  # the other sites are still closed
                first = first or err
        if first is not None:
            raise first

    def commit_round(
        self, charges: dict[str, SiteCharge], steps: Mapping[str, int] | None = None
    ) -> None:
        """After aggregation: each reserved site's mechanism is committed (``steps``: the
        local steps a site actually ran, when fewer than planned; never more)."""
        done = dict(steps or {})
        for name, n in done.items():  # checked for every site before any commits
            if name not in charges or charges[name].reservation is None:
                raise UsageError(f"steps given for site {name!r}, which holds no reservation")
            planned = charges[name].mechanism.steps
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= planned:
                raise UsageError(
                    f"site {name!r}: steps {n!r} must be an integer from 1 to the {planned} "
                    f"reserved (release the round where no step ran); nothing committed"
                )
        self._each(
            charges,
            lambda led, rid: led.commit(rid, steps=done.get(self._site_of(charges, rid))),
        )

    @staticmethod
    def _site_of(charges: Mapping[str, SiteCharge], rid: str) -> str:
        return next(n for n, c in charges.items() if c.reservation == rid)

    def release_round(self, charges: dict[str, SiteCharge], reason: str) -> None:
        """No training happened at these sites: their reservations are returned."""
        self._each(charges, lambda led, rid: led.release(rid, reason=reason))

    def abort_round(self, charges: dict[str, SiteCharge], reason: str) -> None:
        """A crash mid-round: the planned mechanisms stay charged (conservative)."""
        self._each(charges, lambda led, rid: led.abort(rid, reason=reason))

    # ------------------------------------------------------------------ figures
    def spent(self, *, delta: float | None = None) -> dict[str, float]:
        """Per site: the largest per-patient ε of its training blocks now, the figure its
        ledger enforces (pending reservations count), at its policy's δ (or ``delta``). A
        shared patient's figure across ledgers is :meth:`shared_spent`."""
        out: dict[str, float] = {}
        for s in self.sites:
            budget = self._budget(s, delta)
            known = {b.block for b in s.ledger.blocks() if b.dataset == s.dataset}
            blocks = [b for b in s.blocks if b in known]
            rows = s.ledger.budget(budget, dataset=s.dataset, blocks=blocks) if blocks else []
            out[s.name] = max((r.epsilon_spent for r in rows), default=0.0)
        return out

    def shared_spent(self, *, delta: float | None = None) -> dict[str, float]:
        """Per id domain with a patient held at two or more of its ledgers: the largest ε of
        such a patient, composed over every ledger of the domain, under the policy of the
        domain's first site (the sites of one domain are expected to share a policy)."""
        out: dict[str, float] = {}
        for domain, sites in self._domains().items():
            found = self._domain_histories(domain, sites, None)
            if found is None:
                continue
            holding, reads = found
            budget = self._budget(sites[0], delta)
            out[domain] = max(
                (
                    self._patient_epsilon(self._combined(domain, p, reads, []), domain, budget)
                    for p in holding
                ),
                default=0.0,
            )
        return out

    def shared_patients(self) -> dict[str, int]:
        """Per id domain: how many patients are in the training blocks of two or more of
        the run's sites (0 for a domain of one site)."""
        out: dict[str, int] = {}
        for domain, sites in self._domains().items():
            seen: dict[Packed, int] = {}
            for s in sites:
                for p in self._members_of(s):
                    seen[p] = seen.get(p, 0) + 1
            out[domain] = sum(1 for n in seen.values() if n >= 2)
        return out

    @staticmethod
    def _budget(site: OpenSite, delta: float | None) -> Budget:
        budget = site.policy.policy.budget
        if delta is None:
            return budget
        if not (isinstance(delta, float) and 0 < delta < 1):
            raise UsageError(f"delta must be a number in (0, 1), found {delta!r}")
        return budget.model_copy(update={"delta": delta})

    # ------------------------------------------------------------------ shared patients
    def _read(self, ledger: Ledger, domain: str) -> _LedgerRead:
        """Read one ledger's verified state and its membership of ``domain``: reads only
        (the chain is verified as it is read; a membership row that does not match its
        chained digest is refused by :func:`dpgov.ledger.membership.read`)."""
        with ledger._read() as conn:
            st = ledger._state(conn)
            ms = st.members
            key = (self._ledger_id(ledger), domain, structure_key(domain, ms))
            if key not in self._where:
                blobs = membership.read(conn, ms, ms.domain_blocks(domain))
                held: dict[Packed, list[BlockKey]] = {}
                for k in sorted(blobs):
                    for p in _unpack(blobs[k]):
                        held.setdefault(p, []).append(k)
                self._where[key] = {p: tuple(ks) for p, ks in held.items()}
            return _LedgerRead(st, self._where[key], tuple(ms.legacy_of(domain)))

    def _domain_histories(
        self, domain: str, sites: Sequence[OpenSite], reached: set[Packed] | None
    ) -> tuple[dict[Packed, set[str]], dict[str, _LedgerRead]] | None:
        """The patients (of ``reached``, or all) held at two or more of the domain's ledgers,
        with the ledgers holding each, and one read of every ledger; None when the domain
        has fewer than two ledgers (each ledger's own check covers it)."""
        by_ledger: dict[str, list[OpenSite]] = {}
        for s in sites:
            by_ledger.setdefault(self._ledger_id(s.ledger), []).append(s)
        if len(by_ledger) < 2:
            return None
        reads = {lid: self._read(ss[0].ledger, domain) for lid, ss in by_ledger.items()}
        holders: dict[Packed, set[str]] = {}
        for lid, ss in by_ledger.items():
            held = set(reads[lid].where)
            for s in ss:  # a site's training members, registered or not
                held |= self._members_of(s)
            for p in held if reached is None else held & reached:
                holders.setdefault(p, set()).add(lid)
        return {p: ls for p, ls in holders.items() if len(ls) >= 2}, reads

    def _combined(
        self, domain: str, patient: Packed, reads: Mapping[str, _LedgerRead], planned: list[Any]
    ) -> tuple[tuple[Any, int], ...]:
        """A patient's charges on every ledger of the domain plus ``planned``, as a canonical
        multiset (charges on different ledgers are different releases: all of them count)."""
        mechs = [m for r in reads.values() for m, n in r.history(domain, patient) for _ in range(n)]
        return tuple(group([*mechs, *planned]))

    def _patient_epsilon(
        self, multiset: tuple[tuple[Any, int], ...], domain: str, budget: Budget
    ) -> float:
        """ε of one patient's multiset under the rule the budget enforces for the domain."""
        if not multiset:
            return 0.0
        mode = budget.mode_for(domain)
        key = (multiset, mode, budget.accountant, budget.delta, budget.orders)
        if key not in self._eps_memo:
            if mode == FIXED:
                mechs = [m for m, n in multiset for _ in range(n)]
                eps = tight_epsilon(mechs, delta=budget.delta, accountant=budget.accountant)
            else:
                total = [0.0] * len(budget.orders)
                with quiet_absl():
                    for m, n in multiset:
                        vec = rdp_vector(m, budget.orders, n)
                        total = [a + b for a, b in zip(total, vec, strict=True)]
                eps = filter_epsilon(total, budget.delta, budget.orders)
            self._eps_memo[key] = eps
        return self._eps_memo[key]

    def _shared_refusals(self, planned: Mapping[str, Any]) -> dict[str, str]:
        """The planned sites that must refuse because a patient they hold, shared with
        another ledger of their domain, would pass a holding site's limit."""
        out: dict[str, str] = {}
        for domain, sites in self._domains().items():
            reached = {s.name: self._members_of(s) for s in sites if s.name in planned}
            if not reached:
                continue
            found = self._domain_histories(domain, sites, set().union(*reached.values()))
            if found is None:
                continue
            holding, reads = found
            over: set[Packed] = set()
            worst: dict[str, tuple[float, float]] = {}  # site -> (ε, limit), most over
            for p, lids in holding.items():
                plan = [planned[n] for n, ps in reached.items() if p in ps]
                multiset = self._combined(domain, p, reads, plan)
                for s in sites:  # judged under the policy of every site that holds them
                    if self._ledger_id(s.ledger) not in lids:
                        continue
                    limit = s.policy.policy.budget.epsilon_per_block
                    try:
                        eps = self._patient_epsilon(multiset, domain, s.policy.policy.budget)
                    except AccountantFailed:  # not shown to fit: refused, like the ledger does
                        eps = math.inf
                    if eps <= limit:
                        continue
                    over.add(p)
                    for n, ps in reached.items():
                        if p in ps and (n not in worst or eps - limit > worst[n][0] - worst[n][1]):
                            worst[n] = (eps, limit)
            for n, ps in reached.items():
                k = len(ps & over)
                if k:
                    eps, limit = worst[n]
                    mode = self._by_name[n].policy.policy.budget.mode_for(domain)
                    figure = "ε not computable" if math.isinf(eps) else f"up to ε={eps:.4f}"
                    out[n] = (
                        f"{_plural(k, 'patient')} of this site, shared with other sites of id "
                        f"domain {domain!r}, would pass the per-patient limit ε={limit:g} "
                        f"composed over every site's ledger ({mode} composition: {figure}); "
                        f"nothing charged here"
                    )
        return out


__all__ = ["SiteLedgers"]
