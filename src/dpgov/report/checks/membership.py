"""Check: per-patient accounting (issue 15), from the entries and the stored membership.

- **Membership edited outside the ledger**: every stored membership (``dpgov_members``) whose
  SHA-256 no longer matches the digest the chain records (``block_added``, ``members_attached``,
  ``member_erased``), or a membership the chain records that is missing
  (:meth:`dpgov.ledger.Ledger.verify_membership`): a ``projection_mismatch`` finding per block.
- **History classes recomputed**: the patients of each domain are grouped anew by the set of
  blocks holding them (from the stored pseudonyms whose digest matches the chain, here with
  random 64-bit block tokens summed per patient, twice: independent of the ledger's bitmask
  grouping), each class's charges collected from the replayed entries (a reservation once per
  patient; a block registered without members reaches every class of its domain, and every
  charge of the domain reaches the pseudo-class of those blocks), composed with the policy's
  accountant, and compared with what the ledger reports (:meth:`Ledger.patient_classes`): an
  ``epsilon_mismatch`` finding where the patients, the charges or ε disagree.
- **Patients over a limit**: per domain, the number of patients whose recomputed ε is over the
  policy's limit (a ``block_over_budget`` finding naming the domain, the patients affected and
  the worst ε: the limit applies to every patient of every block).

:func:`read_membership` reads what the check needs (the only part that touches the ledger);
:func:`check_membership` is a pure function of it and the replayed entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpgov.accounting import AccountantFailed, DpSgdMechanism
from dpgov.contracts import exceeds
from dpgov.errors import DpgovError
from dpgov.ledger.schema import members_t
from dpgov.ledger.verified import LedgerInconsistent
from dpgov.policy import LoadedPolicy
from dpgov.report.checks import fmt_epsilon
from dpgov.report.checks.filter_figures import filter_token, filter_value
from dpgov.report.findings import Finding, finding
from dpgov.report.ledger_snapshot import LedgerSnapshot
from dpgov.report.replay import Charge, Epsilons, Replay, close_enough, merge_key

BlockKey = tuple[str, str]
WIDTH = 10  # bytes of one packed pseudonym (dpgov.ledger.membership)


@dataclass(frozen=True)
class MembershipFacts:
    """What was read: the stored membership rows, the ledger's own verdict on them, and the
    history classes the ledger reports (None where it could not report them)."""

    stored: dict[BlockKey, bytes] = field(default_factory=dict)
    problems: list[Any] = field(default_factory=list)  # dpgov.ledger.membership.MembershipProblem
    classes: list[Any] | None = None  # dpgov.ledger.records.PatientClass
    error: str | None = None  # why the ledger reported no classes


def read_membership(ledger: Any, policy: LoadedPolicy) -> MembershipFacts:
    """Read the stored membership, the ledger's membership problems and its classes."""
    import sqlalchemy as sa

    c = members_t.c
    with ledger.engine.connect() as conn:
        stored = {
            (str(ds), str(b)): bytes(blob)
            for ds, b, blob in conn.execute(sa.select(c.dataset, c.block, c.members)).all()
        }
    # an untrustworthy chain (edited, deleted entries) is the chain check's finding: here the
    # membership and the classes cannot be judged, and the audit goes on
    try:
        problems = ledger.verify_membership()
        classes = ledger.patient_classes(policy.policy.budget)
        error = None
    except (DpgovError, LedgerInconsistent) as err:
        problems, classes, error = [], None, str(err)
    return MembershipFacts(stored=stored, problems=problems, classes=classes, error=error)


@dataclass
class _Chained:
    """A block's membership as the chained entries say."""

    domain: str
    digest: str | None
    seq: int
    time: str


def chained_membership(snap: LedgerSnapshot) -> dict[BlockKey, _Chained]:
    """Each block's domain and members digest, read from the entries themselves."""
    out: dict[BlockKey, _Chained] = {}
    for e in snap.rows:
        p = e.payload
        if p is None:
            continue
        if e.kind == "block_added":
            key = (str(p.get("dataset")), str(p.get("block")))
            out[key] = _Chained(
                str(p.get("domain") or key[0]), p.get("members_digest"), e.seq, e.time
            )
        elif e.kind == "members_attached":
            key = (str(p.get("dataset")), str(p.get("block")))
            if key in out:
                out[key].digest, out[key].seq = p.get("members_digest"), e.seq
        elif e.kind == "member_erased":
            for item in p.get("blocks") or []:
                if isinstance(item, dict):
                    key = (str(item.get("dataset")), str(item.get("block")))
                    if key in out:
                        out[key].digest, out[key].seq = item.get("members_digest"), e.seq
    return out


@dataclass(frozen=True)
class RecomputedClass:
    domain: str
    blocks: tuple[BlockKey, ...]  # blocks holding its patients (legacy pseudo-class: those)
    count: int
    reservations: tuple[str, ...]
    legacy: bool = False


def recompute_classes(
    chained: dict[BlockKey, _Chained], stored: dict[BlockKey, bytes], r: Replay
) -> tuple[list[RecomputedClass], list[str]]:
    """The history classes of every domain (and the domains left out: a membership that does
    not match its digest cannot be grouped)."""
    import hashlib

    import numpy as np

    domains: dict[str, list[BlockKey]] = {}
    for key, m in chained.items():
        domains.setdefault(m.domain, []).append(key)
    out: list[RecomputedClass] = []
    skipped: list[str] = []
    for domain, keys in sorted(domains.items()):
        legacy = sorted(k for k in keys if chained[k].digest is None)
        with_members = sorted(k for k in keys if chained[k].digest is not None)
        bad = [
            k
            for k in with_members
            if k not in stored or hashlib.sha256(stored[k]).hexdigest() != chained[k].digest
        ]
        if bad:
            skipped.append(domain)
            continue
        domain_charges = _charges_of(r, keys)
        if legacy:
            patients = sum(r.blocks[k].patients for k in legacy if k in r.blocks)
            out.append(
                RecomputedClass(domain, tuple(legacy), patients, domain_charges, legacy=True)
            )
        arrays = [np.frombuffer(stored[k], dtype=f"V{WIDTH}") for k in with_members]
        sizes = [len(a) for a in arrays]
        if not sizes or sum(sizes) == 0:
            continue
        allp = np.concatenate(arrays)
        blk = np.repeat(np.arange(len(with_members)), sizes)
        _, inv = np.unique(allp, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        inv_s, blk_s = inv[order], blk[order]
        starts = np.flatnonzero(np.r_[True, inv_s[1:] != inv_s[:-1]])
        rng = np.random.default_rng(0x15)
        sig = np.empty((len(starts), 2), dtype=np.uint64)
        for col in range(2):
            tokens = rng.integers(0, 2**63, size=len(with_members), dtype=np.uint64)
            sig[:, col] = np.add.reduceat(tokens[blk_s], starts)  # wraps: a sum mod 2^64
        rows = np.ascontiguousarray(sig).view(np.dtype((np.void, 16))).ravel()
        _, first, counts = np.unique(rows, return_index=True, return_counts=True)
        ends = np.r_[starts[1:], len(blk_s)]
        for f, n in zip(first, counts, strict=True):
            held = tuple(with_members[int(i)] for i in blk_s[starts[f] : ends[f]])
            reach = sorted({*held, *legacy})
            out.append(RecomputedClass(domain, tuple(sorted(held)), int(n), _charges_of(r, reach)))
    return out, skipped


def _charges_of(r: Replay, keys: list[BlockKey]) -> tuple[str, ...]:
    """The reservations charged to any of ``keys`` now (each once), in ledger order."""
    seen: dict[str, int] = {}
    for k in keys:
        for c in r.by_block.get(k, []):
            if c.mechanism_at(r.head_seq) is not None:
                seen[c.id] = c.seq
    return tuple(sorted(seen, key=seen.__getitem__))


def _mechanisms(r: Replay, ids: tuple[str, ...]) -> list[DpSgdMechanism]:
    out = []
    for rid in ids:
        charge: Charge = r.charges[rid]
        m = charge.mechanism_at(r.head_seq)
        if m is not None:
            out.append(m)
    return out


def check_membership(
    snap: LedgerSnapshot,
    r: Replay,
    facts: MembershipFacts | None,
    policy: LoadedPolicy,
    eps: Epsilons,
) -> tuple[list[Finding], dict[BlockKey, float]]:
    """Membership against the chain, the classes recomputed, the patients over a limit; and
    each recomputed block's worst-member ε (for :func:`reconcile_budgets`)."""
    if facts is None:
        return [], {}
    budget = policy.policy.budget
    out: list[Finding] = []
    for p in facts.problems:
        out.append(
            finding(
                "projection_mismatch",
                f"{p.line()}: the membership was edited outside the ledger (table "
                "dpgov_members); blocks of its domain refuse charges until it is restored",
                dataset=p.dataset,
                block=p.block,
                table="dpgov_members",
            )
        )
    chained = chained_membership(snap)
    if not chained:
        return out, {}
    recomputed, skipped = recompute_classes(chained, facts.stored, r)
    for domain in skipped:
        out.append(
            finding(
                "epsilon_uncomputable",
                f"domain {domain}: its history classes cannot be recomputed while a "
                "membership of it does not match the chain",
                domain=domain,
            )
        )
    epsilons: dict[int, float] = {}
    for i, c in enumerate(recomputed):
        try:
            mechs = _mechanisms(r, c.reservations)
            if budget.mode_for(c.domain) == "adaptive":  # the RDP filter's ε (issue 16)
                token = filter_token(budget.orders)
                epsilons[i] = filter_value(merge_key(mechs), budget.delta, token) if mechs else 0.0
            else:
                epsilons[i] = (
                    eps.of(mechs, delta=budget.delta, accountant=budget.accountant)
                    if mechs
                    else 0.0
                )
        except (AccountantFailed, ValueError) as err:
            out.append(
                finding(
                    "epsilon_uncomputable",
                    f"domain {c.domain}: a history class of {c.count} patients cannot be "
                    f"composed with {budget.accountant}: {err}",
                    domain=c.domain,
                )
            )
    out += _against_ledger(recomputed, epsilons, facts, skipped)
    out += _over_limit(recomputed, epsilons, budget.epsilon_per_block, budget.delta)
    return out, _block_worst(chained, recomputed, epsilons, skipped)


def _block_worst(
    chained: dict[BlockKey, _Chained],
    recomputed: list[RecomputedClass],
    epsilons: dict[int, float],
    skipped: list[str],
) -> dict[BlockKey, float]:
    """Each block's ε as its worst-off member's (0 for a block whose members were all erased
    and that no charge reached): what the ledger enforces."""
    out: dict[BlockKey, float] = {}
    for i, c in enumerate(recomputed):
        if i not in epsilons:
            continue
        for k in c.blocks:
            out[k] = max(out.get(k, 0.0), epsilons[i])
    for k, m in chained.items():
        if m.domain not in skipped and k not in out:
            out[k] = 0.0
    return out


def reconcile_budgets(
    findings: list[Finding],
    rows: list[Any],
    per_block: dict[BlockKey, float],
    r: Replay,
    snap: LedgerSnapshot,
    policy: LoadedPolicy,
    eps: Epsilons,
) -> list[Finding]:
    """The budgets check composes each block's own charges; under per-patient accounting a
    block's ε is its worst member's, which also counts what reached them through other blocks
    (regroupings, other datasets of the domain), so it is at least that. For every block
    whose members were recomputed: its row shows the worst member's ε; the ledger's figure is
    compared with it instead; a recorded figure above the block's own composition is no
    longer a mismatch (below it still is: an undercount)."""
    budget = policy.policy.budget
    for row in rows:
        key = (row.dataset, row.block)
        if key in per_block and row.epsilon is not None:
            row.epsilon = max(row.epsilon, per_block[key])
            row.remaining = max(0.0, budget.epsilon_per_block - row.epsilon)
    out = []
    for f in findings:
        key = (f.where.get("dataset"), f.where.get("block"))
        if f.kind != "epsilon_mismatch" or key not in per_block:
            out.append(f)
            continue
        rid = f.where.get("reservation")
        if rid is None:
            continue  # the ledger's figure now: compared with the worst member below
        c = r.charges.get(rid)
        if c is None or key[1] not in c.epsilon_after:
            out.append(f)
            continue
        try:
            own = eps.of_key(
                r.state(key[0], key[1], c.seq), delta=c.delta or 0.0, accountant=c.accountant or ""
            )
        except (AccountantFailed, ValueError):
            out.append(f)
            continue
        if c.epsilon_after[key[1]] < own and not close_enough(c.epsilon_after[key[1]], own):
            out.append(f)
    for key, worst in sorted(per_block.items()):
        led = (snap.budget or {}).get(key)
        if led is not None and not close_enough(led, worst):
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"block {key[0]}/{key[1]}: the ledger reports ε={fmt_epsilon(led)}, its "
                    f"worst-off member's charges compose to ε={fmt_epsilon(worst)} (at "
                    f"δ={budget.delta:g}, {budget.accountant}): its projection or caches are "
                    "wrong",
                    dataset=key[0],
                    block=key[1],
                )
            )
    return out


def _against_ledger(
    recomputed: list[RecomputedClass],
    epsilons: dict[int, float],
    facts: MembershipFacts,
    skipped: list[str],
) -> list[Finding]:
    if facts.classes is None:
        return [
            finding(
                "epsilon_uncomputable",
                f"the ledger reports no history classes: {facts.error}",
            )
        ]
    theirs = {
        (c.domain, tuple(sorted(map(tuple, c.blocks))), bool(c.legacy)): c for c in facts.classes
    }
    out = []
    for i, c in enumerate(recomputed):
        led = theirs.pop((c.domain, c.blocks, c.legacy), None)
        where = f"domain {c.domain}: the class of {c.count} patients in {_blocks(c.blocks)}"
        if led is None:
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"{where} is missing from the ledger's history classes",
                    domain=c.domain,
                )
            )
            continue
        problems = []
        if int(led.count) != c.count:
            problems.append(f"the ledger counts {led.count} patients")
        if tuple(led.reservations) != c.reservations:
            problems.append(
                f"the ledger has {len(led.reservations)} charges reaching it, the entries "
                f"{len(c.reservations)}"
            )
        if i in epsilons and not close_enough(float(led.epsilon), epsilons[i]):
            problems.append(
                f"the ledger reports ε={fmt_epsilon(float(led.epsilon))}, its charges compose "
                f"to ε={fmt_epsilon(epsilons[i])}"
            )
        if problems:
            out.append(
                finding("epsilon_mismatch", f"{where}: {'; '.join(problems)}", domain=c.domain)
            )
    for (domain, blocks, _), led in sorted(theirs.items(), key=lambda kv: kv[0][:2]):
        if domain in skipped or int(led.count) == 0:
            continue
        out.append(
            finding(
                "epsilon_mismatch",
                f"domain {domain}: the ledger reports a class of {led.count} patients in "
                f"{_blocks(blocks)} that the membership does not hold",
                domain=domain,
            )
        )
    return out


def _over_limit(
    recomputed: list[RecomputedClass], epsilons: dict[int, float], limit: float, delta: float
) -> list[Finding]:
    over: dict[str, list[int]] = {}
    for i, c in enumerate(recomputed):
        if i in epsilons and exceeds(epsilons[i], limit):
            over.setdefault(c.domain, []).append(i)
    out = []
    for domain, idx in sorted(over.items()):
        patients = sum(recomputed[i].count for i in idx)
        worst = max(idx, key=lambda i: epsilons[i])
        blocks = sorted({k for i in idx for k in recomputed[i].blocks})
        out.append(
            finding(
                "block_over_budget",
                f"{patients} patient(s) of domain {domain} have spent more than the policy's "
                f"limit {limit:g} (worst ε={fmt_epsilon(epsilons[worst])} at δ={delta:g}), "
                f"in {_blocks(blocks)}",
                domain=domain,
                patients=patients,
                dataset=blocks[0][0] if blocks else None,
                block=blocks[0][1] if blocks else None,
            )
        )
    return out


def _blocks(keys: Any) -> str:
    shown = [f"{ds}/{b}" for ds, b in list(keys)[:4]]
    more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
    return "blocks " + ", ".join(shown) + more if shown else "no block"
