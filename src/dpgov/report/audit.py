"""The audit's checks: pure functions of what :mod:`dpgov.report.collect` read.

:func:`audit` runs every check and assembles an :class:`AuditReport` (findings plus what a data
protection officer reads: budgets per block over time, ε per run, releases with their privacy
statements, pending and aborted reservations, the policies in force). Nothing here reads a file
or a database; ε is recomputed with :mod:`dpgov.accounting` from the mechanisms the entries
hold (:mod:`dpgov.report.replay`).

What is checked, and against what:

1. the hash chain over the rows as stored (and their HMAC signatures when the key is set);
2. anchors in the tracking store: the entry at each anchored seq still has the anchored hash,
   and the ledger's head is not behind the newest anchor;
3. the projections (blocks, reservations, charges) against the state rebuilt from the entries;
4. every block's ε, recomputed from scratch, against the ledger's own figure, the figure each
   reservation recorded, the cumulative-ε metrics logged to MLflow, and the policy's limit;
5. every registry alias against the ledger's promotions, every promotion against an allowing
   gate decision, every decision's approvers against standing approvals;
6. every DP run in MLflow against its ledger charges, every charge's run against MLflow, every
   charge's data version against DVC;
7. reservations left pending longer than ``stale_hours``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dpgov.report.findings import TIMELESS, Finding, finding
from dpgov.report.replay import (
    Charge,
    Epsilons,
    RawEntry,
    Replay,
    close_enough,
    merge_key,
    replay,
)

if TYPE_CHECKING:
    from dpgov.ledger import Ledger
    from dpgov.policy import LoadedPolicy
    from dpgov.report.collect import (
        DvcIndex,
        LedgerSnapshot,
        ModelRecord,
        RunRecord,
        TrackingSnapshot,
    )
    from dpgov.tracking.anchor import Anchor

GOV_KINDS = ("gate_decision", "approval", "refusal", "promotion", "promotion_failed")
MAX_CANDIDATE_STATES = 12  # ledger states tried when matching a logged cumulative ε
MAX_RUN_COMPOSITIONS = 4  # from-scratch compositions spent on run figures (--deep: no limit)


@dataclass(frozen=True)
class AuditOptions:
    now: datetime
    since: datetime | None = None
    stale_hours: float = 24.0
    deep: bool = False  # verify the ε every reservation recorded, not only the newest


@dataclass
class AuditReport:
    findings: list[Finding]
    generated: str
    since: str | None
    policy: dict[str, Any]
    ledger: dict[str, Any]
    anchors: dict[str, Any]
    tracking: dict[str, Any]
    dvc: dict[str, Any]
    blocks: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    reservations: dict[str, list[dict[str, Any]]]
    policies: list[dict[str, Any]]
    releases: list[dict[str, Any]]
    counts: dict[str, Any] = field(default_factory=dict)
    findings_before_since: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "findings_before_since": self.findings_before_since,
            "generated": self.generated,
            "since": self.since,
            "counts": self.counts,
            "policy": self.policy,
            "ledger": self.ledger,
            "anchors": self.anchors,
            "tracking": self.tracking,
            "dvc": self.dvc,
            "blocks": self.blocks,
            "runs": self.runs,
            "reservations": self.reservations,
            "policies": self.policies,
            "releases": self.releases,
        }


# ------------------------------------------------------------------------------------ helpers


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time as an aware datetime (naive ones are UTC); None when unreadable."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def metric_key(block: str) -> str:
    """How training names a block in its metric ``epsilon_block.<key>``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(block))


def _short(h: str | None) -> str:
    return (h or "")[:12] + "…" if h else "—"


def _json_list(text: str | None) -> list[Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.4f}"


# ------------------------------------------------------------------------------------ 1. chain


def check_chain(snap: LedgerSnapshot) -> tuple[list[Finding], dict[str, Any]]:
    v = snap.verification
    rows = snap.rows
    out = []
    if not v.ok:
        bad = next((r for r in rows if r.seq == v.first_bad_seq), None)
        out.append(
            finding(
                "chain_broken",
                f"hash chain broken at entry {v.first_bad_seq}: {v.reason}",
                seq=v.first_bad_seq,
                time=bad.time if bad else None,
            )
        )
    signed = sum(1 for r in rows if r.signature)
    head = rows[-1] if rows else None
    summary = {
        "url": snap.url,
        "entries": len(rows),
        "head_seq": head.seq if head else 0,
        "head_hash": head.hash if head else None,
        "first_time": rows[0].time if rows else None,
        "last_time": head.time if head else None,
        "chain_ok": v.ok,
        "first_bad_seq": v.first_bad_seq,
        "reason": v.reason,
        "hmac_key_set": snap.hmac_key_set,
        "signed_entries": signed,
        "unsigned_entries": len(rows) - signed,
        "signatures_checked": snap.hmac_key_set,
        "kinds": _count(r.kind for r in rows),
    }
    return out, summary


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------- 2. anchors


def check_anchors(
    rows: Sequence[RawEntry], anchors: Sequence[Anchor], *, hmac_key_set: bool
) -> tuple[list[Finding], dict[str, Any]]:
    """Anchors against the rows. Pure."""
    out: list[Finding] = []
    by_seq = {r.seq: r for r in rows}
    head_seq = max(by_seq) if by_seq else 0
    matched = 0
    for a in anchors:
        if a.deleted:
            out.append(
                finding(
                    "anchor_deleted",
                    f"anchor of entry {a.seq} (run {a.run_id}, {a.time}) was "
                    f"deleted in the tracking store: still checked, but someone hid it",
                    seq=a.seq,
                    run_id=a.run_id,
                )
            )
        if a.seq > head_seq:
            continue  # reported once below as a truncation
        row = by_seq.get(a.seq)
        if row is None:
            out.append(
                finding(
                    "anchor_mismatch",
                    f"entry {a.seq}, anchored at {a.time}, is missing from the ledger (deleted)",
                    seq=a.seq,
                    run_id=a.run_id,
                )
            )
        elif row.hash != a.hash:
            out.append(
                finding(
                    "anchor_mismatch",
                    f"entry {a.seq} now has hash {_short(row.hash)} but "
                    f"{_short(a.hash)} was anchored at {a.time}: the ledger was rewritten at or "
                    f"before entry {a.seq}",
                    seq=a.seq,
                    run_id=a.run_id,
                )
            )
        else:
            matched += 1
    newest = max(anchors, key=lambda a: a.seq) if anchors else None
    if newest is not None and newest.seq > head_seq:
        out.append(
            finding(
                "ledger_truncated",
                f"the ledger's head is entry {head_seq}, but entry "
                f"{newest.seq} was anchored at {newest.time}: its newest "
                f"{newest.seq - head_seq} entries are gone",
                seq=newest.seq,
                run_id=newest.run_id,
            )
        )
    covered = newest.seq if newest is not None else 0
    commits = [r for r in rows if r.kind == "commit" and r.seq > covered]
    if commits and not hmac_key_set:
        since = f"after the newest anchor (entry {covered})" if covered else "and no anchor"
        out.append(
            finding(
                "unanchored_commits",
                f"{len(commits)} commit(s) {since}, entries "
                f"{commits[0].seq}..{commits[-1].seq}, and no HMAC key: a rewrite of those entries "
                f"would go unnoticed (anchor the head: dpgov audit --anchor)",
                seq=commits[0].seq,
            )
        )
    summary = {
        "count": len(anchors),
        "matched": matched,
        "newest_seq": newest.seq if newest else None,
        "newest_time": newest.time if newest else None,
        "unanchored_entries": max(0, head_seq - covered),
        "list": [a.to_dict() for a in anchors[-50:]],
    }
    return out, summary


# ------------------------------------------------------------------------------- 3. projection


def check_projection(r: Replay, snap: LedgerSnapshot) -> list[Finding]:
    """The ledger's projection tables against the state rebuilt from its entries."""
    out: list[Finding] = []
    if snap.blocks is not None:
        for key in sorted(set(snap.blocks) | set(r.blocks)):
            ds, b = key
            proj, rec = snap.blocks.get(key), r.blocks.get(key)
            if rec is None:
                out.append(
                    finding(
                        "projection_mismatch",
                        f"block {ds}/{b} is in the blocks table but no entry registered it",
                        dataset=ds,
                        block=b,
                    )
                )
            elif proj is None:
                out.append(
                    finding(
                        "projection_mismatch",
                        f"block {ds}/{b} registered at "
                        f"entry {rec.seq} is missing from the blocks table",
                        dataset=ds,
                        block=b,
                    )
                )
            elif proj["patients"] != rec.patients or proj["retired"] != rec.retired:
                out.append(
                    finding(
                        "projection_mismatch",
                        f"block {ds}/{b}: the blocks table says "
                        f"{proj['patients']} patients, retired={proj['retired']}; the entries say "
                        f"{rec.patients}, retired={rec.retired}",
                        dataset=ds,
                        block=b,
                    )
                )
    if snap.reservations is not None:
        for rid in sorted(set(snap.reservations) | set(r.charges)):
            proj_r, ch = snap.reservations.get(rid), r.charges.get(rid)
            if ch is None:
                out.append(
                    finding(
                        "projection_mismatch",
                        f"reservation {rid} is in the reservations table but no entry made it",
                        reservation=rid,
                    )
                )
                continue
            if proj_r is None:
                out.append(
                    finding(
                        "projection_mismatch",
                        f"reservation {rid} (entry "
                        f"{ch.seq}) is missing from the reservations table",
                        reservation=rid,
                        seq=ch.seq,
                    )
                )
                continue
            diffs = []
            if proj_r.status != ch.status:
                diffs.append(f"status {proj_r.status} (entries: {ch.status})")
            if proj_r.mechanism != ch.mechanism.to_dict():
                diffs.append(
                    f"mechanism {json.dumps(proj_r.mechanism, sort_keys=True)} "
                    f"(entries: {json.dumps(ch.mechanism.to_dict(), sort_keys=True)})"
                )
            if sorted(proj_r.blocks) != sorted(ch.blocks) or proj_r.dataset != ch.dataset:
                diffs.append(
                    f"charges {proj_r.dataset}/{','.join(proj_r.blocks)} (entries: "
                    f"{ch.dataset}/{','.join(sorted(ch.blocks))})"
                )
            if diffs:
                out.append(
                    finding(
                        "projection_mismatch",
                        f"reservation {rid}: the projection says {'; '.join(diffs)}",
                        reservation=rid,
                        seq=ch.seq,
                    )
                )
    return out


# ---------------------------------------------------------------------------------- 4. budgets


def _recorded_to_check(r: Replay, *, deep: bool) -> dict[tuple[str, str], list[Charge]]:
    """Per block, the reservations whose recorded ε is recomputed: the newest (all: deep)."""
    out = {}
    for ds, b in r.blocks:
        recorded = [
            c
            for c in r.by_block.get((ds, b), [])
            if b in c.epsilon_after and c.delta and c.accountant
        ]
        out[(ds, b)] = recorded if deep else recorded[-1:]
    return out


def block_requests(
    r: Replay, policy: LoadedPolicy, *, deep: bool = False
) -> list[tuple[Any, float, str]]:
    """The compositions :func:`check_budgets` needs: every block now at the policy's δ, and
    the states whose recorded ε it recomputes. Start them early with :meth:`Epsilons.start`."""
    budget = policy.policy.budget
    return [(r.state(ds, b), budget.delta, budget.accountant) for ds, b in r.blocks] + [
        (r.state(c.dataset, b, c.seq), c.delta or 0.0, c.accountant or "")
        for (_, b), cs in _recorded_to_check(r, deep=deep).items()
        for c in cs
    ]


def check_budgets(
    r: Replay, snap: LedgerSnapshot, policy: LoadedPolicy, eps: Epsilons, *, deep: bool, now: str
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """Every block's ε from scratch, against the ledger, the recorded figures and the limit."""
    from dpgov.accounting import AccountantFailed

    budget = policy.policy.budget
    out: list[Finding] = []
    blocks = []
    checked = _recorded_to_check(r, deep=deep)
    eps.prefetch(block_requests(r, policy, deep=deep))
    for (ds, b), rec in sorted(r.blocks.items()):
        charges = r.by_block.get((ds, b), [])
        status = _count(c.status for c in charges)
        row: dict[str, Any] = {
            "dataset": ds,
            "block": b,
            "patients": rec.patients,
            "retired": rec.retired,
            "data_version": rec.data_version,
            "registered": rec.time,
            "epsilon": None,
            "epsilon_ledger": None,
            "epsilon_limit": budget.epsilon_per_block,
            "remaining": None,
            "delta": budget.delta,
            "accountant": budget.accountant,
            "charges": sum(1 for c in charges if c.active),
            "pending": status.get("pending", 0),
            "committed": status.get("committed", 0),
            "aborted": status.get("aborted", 0),
            "released": status.get("released", 0),
            "burn_down": [],
        }
        blocks.append(row)
        try:
            spent = eps.of_key(r.state(ds, b), delta=budget.delta, accountant=budget.accountant)
        except (AccountantFailed, ValueError) as err:
            out.append(
                finding(
                    "epsilon_uncomputable",
                    f"block {ds}/{b}: its charges cannot be "
                    f"composed with {budget.accountant}: {err}",
                    dataset=ds,
                    block=b,
                )
            )
            continue
        row["epsilon"] = spent
        row["remaining"] = max(0.0, budget.epsilon_per_block - spent)
        led = (snap.budget or {}).get((ds, b))
        row["epsilon_ledger"] = led
        if led is not None and not close_enough(led, spent):
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"block {ds}/{b}: the ledger reports ε={_fmt(led)}, its "
                    f"entries compose to ε={_fmt(spent)} (at δ={budget.delta:g}, "
                    f"{budget.accountant}): its projection or composition cache is wrong",
                    dataset=ds,
                    block=b,
                )
            )
        if spent > budget.epsilon_per_block * (1 + 1e-9):
            out.append(
                finding(
                    "block_over_budget",
                    f"block {ds}/{b} has spent ε={_fmt(spent)}, over the "
                    f"policy's limit {budget.epsilon_per_block:g} (at δ={budget.delta:g})",
                    dataset=ds,
                    block=b,
                )
            )
        recorded = [c for c in charges if b in c.epsilon_after and c.delta and c.accountant]
        for c in checked[(ds, b)]:
            try:
                then = eps.of_key(
                    r.state(ds, b, c.seq), delta=c.delta or 0.0, accountant=c.accountant or ""
                )
            except (AccountantFailed, ValueError):
                continue
            if not close_enough(then, c.epsilon_after[b]):
                out.append(
                    finding(
                        "epsilon_mismatch",
                        f"block {ds}/{b}: reservation {c.id} (entry {c.seq}) "
                        f"recorded ε={_fmt(c.epsilon_after[b])} after it, the entries before it "
                        f"compose to ε={_fmt(then)}",
                        dataset=ds,
                        block=b,
                        reservation=c.id,
                        seq=c.seq,
                        time=c.time,
                    )
                )
        row["burn_down"] = [
            {
                "time": c.time,
                "seq": c.seq,
                "epsilon": c.epsilon_after[b],
                "delta": c.delta,
                "reservation": c.id,
                "source": "recorded",
            }
            for c in recorded
        ] + [
            {
                "time": now,
                "seq": r.head_seq,
                "epsilon": spent,
                "delta": budget.delta,
                "reservation": None,
                "source": "recomputed",
            }
        ]
    return out, blocks


# -------------------------------------------------------------------------------- 5. releases


@dataclass(frozen=True)
class GovEntry:
    seq: int
    kind: str
    time: str
    actor: str
    payload: dict[str, Any]


def gov_entries(rows: Sequence[RawEntry]) -> list[GovEntry]:
    return [
        GovEntry(r.seq, r.kind, r.time, r.actor, r.payload)
        for r in rows
        if r.kind in GOV_KINDS and r.payload is not None
    ]


def effective_promotions(gov: Sequence[GovEntry]) -> list[GovEntry]:
    """Promotion entries that took effect (no ``promotion_failed`` names them), in order."""
    failed = {e.payload.get("promotion_seq") for e in gov if e.kind == "promotion_failed"}
    return [e for e in gov if e.kind == "promotion" and e.seq not in failed]


def _v(value: Any) -> str | None:
    return None if value is None else str(value)


def check_releases(
    gov: Sequence[GovEntry], models: Sequence[ModelRecord], policy: LoadedPolicy
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """Aliases against promotions, promotions against decisions and approvals. Pure."""
    from dpgov.policy import approver_key

    out: list[Finding] = []
    promos = effective_promotions(gov)
    by_seq = {e.seq: e for e in gov}
    history: dict[tuple[str, str], list[GovEntry]] = {}
    for p in promos:
        key = (str(p.payload.get("model")), str(p.payload.get("alias")))
        history.setdefault(key, []).append(p)

    checked: dict[int, dict[str, Any]] = {}
    votes: dict[tuple[str, str | None], list[GovEntry]] = {}
    for e in gov:
        if e.kind in ("approval", "refusal"):
            votes.setdefault((str(e.payload.get("model")), _v(e.payload.get("version"))), [])
            votes[(str(e.payload.get("model")), _v(e.payload.get("version")))].append(e)

    def check_promotion(p: GovEntry) -> dict[str, Any]:
        if p.seq in checked:
            return checked[p.seq]
        model, version = str(p.payload.get("model")), _v(p.payload.get("version"))
        alias = str(p.payload.get("alias"))
        where = {"model": model, "version": version, "alias": alias, "seq": p.seq}
        d = by_seq.get(p.payload.get("decision_seq"))  # type: ignore[arg-type]
        info: dict[str, Any] = {
            "decision_seq": d.seq if d else None,
            "approvals": [],
            "decision_ok": False,
            "approvals_ok": False,
        }
        checked[p.seq] = info
        if (
            d is None
            or d.kind != "gate_decision"
            or d.seq > p.seq
            or str(d.payload.get("model")) != model
            or _v(d.payload.get("version")) != version
        ):
            out.append(
                finding(
                    "release_without_decision",
                    f"promotion of {model} version {version} to "
                    f"@{alias} (entry {p.seq}) names decision entry "
                    f"{p.payload.get('decision_seq')}, which is not a gate decision on that "
                    f"version made before it",
                    time=p.time,
                    **where,
                )
            )
            return info
        if d.payload.get("allowed") is not True:
            out.append(
                finding(
                    "release_without_decision",
                    f"promotion of {model} version {version} to "
                    f"@{alias} (entry {p.seq}) rests on decision entry {d.seq}, which did not "
                    f"allow it (failing: {', '.join(d.payload.get('failing') or []) or '?'})",
                    time=p.time,
                    **where,
                )
            )
            return info
        info["decision_ok"] = True
        info["policy_sha256"] = d.payload.get("policy_sha256")
        info["decision_time"] = d.time
        approvers = [str(a) for a in d.payload.get("approvers") or []]
        required = next(
            (
                c.get("limit")
                for c in d.payload.get("checks") or []
                if isinstance(c, dict) and c.get("name") == "approvals"
            ),
            None,
        )
        if not isinstance(required, int) or isinstance(required, bool):
            required = policy.policy.approvals.required
        latest: dict[str, GovEntry] = {}
        for e in votes.get((model, version), []):
            if e.seq < d.seq:
                latest[approver_key(str(e.payload.get("by", "")))] = e
        problems = []
        for name in approvers:
            standing = latest.get(approver_key(name))
            if standing is None or standing.kind != "approval":
                problems.append(f"{name} has no standing approval before it")
            else:
                info["approvals"].append(
                    {
                        "by": name,
                        "seq": standing.seq,
                        "time": standing.time,
                        "note": standing.payload.get("note", ""),
                    }
                )
        refusals = [e for e in latest.values() if e.kind == "refusal"]
        if refusals:
            problems.append(
                "refused by "
                + ", ".join(str(e.payload.get("by")) for e in refusals)
                + " and not withdrawn"
            )
        if len(approvers) < required:
            problems.append(f"{len(approvers)} approver(s) counted, {required} required")
        if problems:
            out.append(
                finding(
                    "release_without_approvals",
                    f"promotion of {model} version {version} to "
                    f"@{alias} (entry {p.seq}), decision entry {d.seq}: {'; '.join(problems)}",
                    time=p.time,
                    **where,
                )
            )
        else:
            info["approvals_ok"] = True
        return info

    # every alias change went through the gate: each promotion replaced what the previous
    # one had put there
    for (model, alias), hist in sorted(history.items()):
        before: str | None = None
        for p in hist:
            check_promotion(p)
            replaced = _v(p.payload.get("replaced"))
            if replaced != before:
                was = f"version {before}" if before else "unset"
                out.append(
                    finding(
                        "alias_outside_gate",
                        f"{model} @{alias}: promotion entry {p.seq} found it "
                        f"on {'version ' + replaced if replaced else 'no version'}, but the "
                        f"previous promotion had left it {was}: "
                        "it was moved outside the gate in between",
                        model=model,
                        alias=alias,
                        seq=p.seq,
                        time=p.time,
                    )
                )
            before = _v(p.payload.get("version"))

    governed = {str(e.payload.get("model")) for e in gov}
    releases = []
    for m in models:
        for alias, version in sorted(m.aliases.items()):
            hist = history.get((m.name, alias), [])
            where = {"model": m.name, "version": version, "alias": alias}
            if not hist:
                why = (
                    ""
                    if (m.name in governed or _dpgov_tagged(m))
                    else (" (the model was never governed by dpgov)")
                )
                out.append(
                    finding(
                        "alias_outside_gate",
                        f"{m.name} @{alias} points at version {version}, but "
                        f"the ledger records no promotion to @{alias}{why}: the alias was set "
                        "outside the gate",
                        **where,
                    )
                )
                continue
            last = hist[-1]
            if _v(last.payload.get("version")) != version:
                out.append(
                    finding(
                        "alias_outside_gate",
                        f"{m.name} @{alias} points at version {version}, but "
                        f"the ledger's last promotion (entry {last.seq}, {last.time}) put it on "
                        f"version {last.payload.get('version')}: the alias was moved outside the "
                        "gate",
                        **where,
                    )
                )
                continue
            info = check_promotion(last)
            vrec = m.versions.get(version)
            releases.append(
                {
                    "model": m.name,
                    "alias": alias,
                    "version": version,
                    "promotion_seq": last.seq,
                    "promoted": last.time,
                    "promoted_by": last.actor,
                    "replaced": _v(last.payload.get("replaced")),
                    "run_id": (vrec.run_id if vrec else None) or last.payload.get("run_id"),
                    "tags": dict(vrec.tags) if vrec else {},
                    **info,
                }
            )
    return out, releases


def _dpgov_tagged(m: ModelRecord) -> bool:
    return any(k.startswith("dpgov.") for v in m.versions.values() for k in v.tags)


# ------------------------------------------------------------------------ 6. runs and data


def is_dp_run(run: RunRecord) -> bool:
    """A run that trained with DP: dpgov marks it, or it logs DP parameters or ε."""
    private = run.tags.get("dpgov.private")
    if private is not None:
        return private.lower() == "true"
    return (
        "noise_multiplier" in run.params
        or "epsilon" in run.metrics
        or "dpgov.reservation" in run.tags
    )


def charge_epsilon(c: Charge, eps: Epsilons, policy: LoadedPolicy) -> float | None:
    """A charge's own ε at its δ: recorded at reservation when the plan ran in full."""
    from dpgov.accounting import AccountantFailed

    delta = c.delta or policy.policy.budget.delta
    acc = c.accountant or policy.policy.budget.accountant
    if c.status == "released":
        return 0.0
    if c.mechanism == c.planned and c.epsilon_run is not None and c.delta and c.accountant:
        return c.epsilon_run
    try:
        return eps.of([c.mechanism], delta=delta, accountant=acc)
    except (AccountantFailed, ValueError):
        return None


@dataclass
class RunFigures:
    """Where the ε figures a run logged were checked against: the figure the ledger recorded
    for exactly the same state, a from-scratch composition, or (beyond the budget of
    compositions, without --deep) not at all."""

    eps: Epsilons
    recorded: dict[tuple[Any, float, str], float]
    budget: int | None  # compositions left; None: unlimited (--deep)
    granted: set[tuple[Any, float, str]] = field(default_factory=set)  # paid for up front
    compared_with_recorded: int = 0
    recomputed: int = 0
    not_checked: int = 0

    def value(self, key: Any, delta: float, accountant: str) -> float | None:
        known = self.eps.known(key, delta=delta, accountant=accountant)
        if known is not None:
            self.recomputed += 1
            return known
        if (key, delta, accountant) in self.recorded:
            self.compared_with_recorded += 1
            return self.recorded[(key, delta, accountant)]
        granted = (key, delta, accountant) in self.granted
        if self.budget is not None and self.budget <= 0 and not granted:
            self.not_checked += 1
            return None
        if self.budget is not None and not granted:
            self.budget -= 1
        self.recomputed += 1
        return self.eps.of_key(key, delta=delta, accountant=accountant)

    def summary(self) -> dict[str, int]:
        return {
            "compared_with_recorded": self.compared_with_recorded,
            "recomputed": self.recomputed,
            "not_checked": self.not_checked,
        }


def recorded_figures(r: Replay) -> dict[tuple[Any, float, str], float]:
    """The ε the ledger recorded, by the exact state it was recorded for: each reservation's
    ε of its plan alone and each block's ε after it (hash-chained, so they cannot be changed
    without the chain check or the anchors noticing)."""
    out: dict[tuple[Any, float, str], float] = {}
    for c in r.charges.values():
        if not c.delta or not c.accountant:
            continue
        if c.epsilon_run is not None:
            out[(merge_key([c.planned]), c.delta, c.accountant)] = c.epsilon_run
        for b, value in c.epsilon_after.items():
            out[(r.state(c.dataset, b, c.seq), c.delta, c.accountant)] = value
    return out


def check_runs(
    r: Replay,
    runs: Sequence[RunRecord],
    eps: Epsilons,
    policy: LoadedPolicy,
    *,
    tracking_ok: bool,
    deep: bool = False,
) -> tuple[list[Finding], dict[str, RunRecord], dict[str, int]]:
    """DP runs in MLflow against the ledger's charges, and the charges against MLflow."""
    out: list[Finding] = []
    claimed: dict[str, RunRecord] = {}
    by_id = {run.run_id: run for run in runs}
    figures = RunFigures(eps, recorded_figures(r), None if deep else MAX_RUN_COMPOSITIONS)
    newest_first = sorted(runs, key=lambda x: x.start_time, reverse=True)
    _prefetch_run_figures(r, newest_first, figures, policy)
    for run in newest_first:
        if not is_dp_run(run):
            continue
        where = {"run_id": run.run_id, "experiment": run.experiment}
        rid = run.tags.get("dpgov.reservation")
        if not rid:
            out.append(
                finding(
                    "run_without_charges",
                    f"DP run {run.run_id} ({run.name or 'unnamed'}, "
                    f"experiment {run.experiment!r}) names no ledger reservation: its privacy "
                    "loss was never charged to any block",
                    time=run.start_time,
                    **where,
                )
            )
            continue
        c = r.charges.get(rid)
        if c is None:
            out.append(
                finding(
                    "run_without_charges",
                    f"DP run {run.run_id} names reservation {rid}, which the ledger does not hold",
                    time=run.start_time,
                    reservation=rid,
                    **where,
                )
            )
            continue
        where["reservation"] = rid
        if rid in claimed and claimed[rid].run_id != run.run_id:
            out.append(
                finding(
                    "run_charge_mismatch",
                    f"runs {claimed[rid].run_id} and {run.run_id} both "
                    f"claim reservation {rid}: one charge paid for two runs",
                    time=run.start_time,
                    **where,
                )
            )
        claimed.setdefault(rid, run)
        out += _run_tags_vs_charge(run, c, where)
        if run.status == "RUNNING" and c.status != "pending":
            out.append(
                finding(
                    "run_left_running",
                    f"DP run {run.run_id} is still RUNNING in MLflow, but its reservation {rid} "
                    f"was {c.status} (entry {c.closed_seq}): the process ended without closing "
                    "the run, so its logged metrics may be incomplete; the charge stands",
                    time=c.closed_time or run.start_time,
                    **where,
                )
            )
        if c.status == "committed":
            out += _run_metrics_vs_ledger(r, run, c, figures, policy, where)
    if tracking_ok:
        for c in r.charges.values():
            if c.run_id is None:
                continue
            found = by_id.get(c.run_id)
            if found is None or found.deleted:
                what = "is not in the tracking store" if found is None else "was deleted"
                out.append(
                    finding(
                        "charge_without_run",
                        f"reservation {c.id} (entry {c.seq}) names run {c.run_id}, which {what}",
                        reservation=c.id,
                        run_id=c.run_id,
                        seq=c.seq,
                        time=c.time,
                    )
                )
    return out, claimed, figures.summary()


def _run_figure_request(run: RunRecord, c: Charge, policy: LoadedPolicy) -> tuple[float, str]:
    delta = run.metrics.get("delta") or c.delta or policy.policy.budget.delta
    acc = c.accountant or run.params.get("accountant") or policy.policy.budget.accountant
    return delta, acc


def _prefetch_run_figures(
    r: Replay, runs: Sequence[RunRecord], figures: RunFigures, policy: LoadedPolicy
) -> None:
    """Compose up front, in parallel, the states the newest runs' figures need that the
    ledger recorded no figure for (as many as the budget of compositions allows)."""
    wanted: dict[tuple[Any, float, str], None] = {}
    for run in runs:
        c = r.charges.get(run.tags.get("dpgov.reservation") or "")
        if c is None or c.status != "committed" or not is_dp_run(run):
            continue
        delta, acc = _run_figure_request(run, c, policy)
        keys = [merge_key([c.mechanism])] if "epsilon" in run.metrics else []
        keys += [
            r.state(c.dataset, b, c.closed_seq)
            for b in c.blocks
            if f"epsilon_block.{metric_key(b)}" in run.metrics
        ]
        for key in keys:
            if (key, delta, acc) not in figures.recorded and figures.eps.known(
                key, delta=delta, accountant=acc
            ) is None:
                wanted[(key, delta, acc)] = None
    todo = list(wanted)
    if figures.budget is not None:
        todo = todo[: figures.budget]
        figures.budget -= len(todo)
    figures.granted.update(todo)
    figures.eps.prefetch(todo)


def _run_tags_vs_charge(run: RunRecord, c: Charge, where: dict[str, Any]) -> list[Finding]:
    diffs = []
    t = run.tags
    if t.get("dpgov.dataset") not in (None, c.dataset):
        diffs.append(f"dataset {t['dpgov.dataset']!r} (ledger: {c.dataset!r})")
    blocks = _json_list(t.get("dpgov.blocks"))
    if blocks is not None and sorted(map(str, blocks)) != sorted(c.blocks):
        diffs.append(f"blocks {blocks} (ledger: {list(c.blocks)})")
    if c.data_version and t.get("dpgov.data_version") not in (None, c.data_version):
        diffs.append(f"data version {t['dpgov.data_version']} (ledger: {c.data_version})")
    entries = _json_list(t.get("dpgov.ledger_entries"))
    own = {c.seq, c.closed_seq}
    if entries is not None and not set(entries) <= own:
        diffs.append(
            f"ledger entries {entries} (the reservation's are "
            f"{sorted(s for s in own if s is not None)})"
        )
    commit = t.get("dpgov.commit")
    if commit is not None and (c.status != "committed" or commit != str(c.closed_seq)):
        diffs.append(
            f"commit entry {commit} (ledger: {c.status}"
            f"{' at entry ' + str(c.closed_seq) if c.closed_seq else ''})"
        )
    if c.run_id and c.run_id != run.run_id:
        diffs.append(f"the ledger's commit names run {c.run_id}")
    if c.status == "released" and run.status == "FINISHED":
        diffs.append("the run finished but its reservation was released (budget returned)")
    if not diffs:
        return []
    return [
        finding(
            "run_charge_mismatch",
            f"DP run {run.run_id} vs reservation {c.id}: " + "; ".join(diffs),
            time=run.start_time,
            **where,
        )
    ]


def _run_metrics_vs_ledger(
    r: Replay,
    run: RunRecord,
    c: Charge,
    figures: RunFigures,
    policy: LoadedPolicy,
    where: dict[str, Any],
) -> list[Finding]:
    from dpgov.accounting import AccountantFailed

    out: list[Finding] = []
    delta, acc = _run_figure_request(run, c, policy)
    logged = run.metrics.get("epsilon")
    if logged is not None:
        try:
            own = figures.value(merge_key([c.mechanism]), delta, acc)
        except (AccountantFailed, ValueError):
            own = None
        if own is not None and not close_enough(own, logged):
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"run {run.run_id} logged ε={_fmt(logged)}, the mechanism "
                    f"its reservation {c.id} committed costs ε={_fmt(own)} (δ={delta:g}, {acc})",
                    time=run.start_time,
                    **where,
                )
            )
    end = parse_time(run.end_time)
    commit = c.closed_seq or c.seq
    for b in c.blocks:
        value = run.metrics.get(f"epsilon_block.{metric_key(b)}")
        if value is None:
            continue
        # what the block had spent just after the commit, or (concurrent runs) after any
        # later change made before the run ended
        seqs = [commit] + [s for s in r.change_seqs(c.dataset, b) if s > commit]
        first: float | None = None
        matched = conclusive = False
        for s in seqs[:MAX_CANDIDATE_STATES]:
            t = parse_time(r.times.get(s))
            if first is not None and end is not None and t is not None and t > end:
                conclusive = True  # every state the run could have seen was tried
                break
            try:
                then = figures.value(r.state(c.dataset, b, s), delta, acc)
            except (AccountantFailed, ValueError):
                break
            if then is None:  # out of compositions: neither a match nor a finding
                break
            first = then if first is None else first
            if close_enough(then, value):
                matched = True
                break
        else:
            conclusive = True
        if first is not None and not matched and conclusive:
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"run {run.run_id} logged cumulative ε={_fmt(value)} for "
                    f"block {c.dataset}/{b}, the ledger's entries give ε={_fmt(first)} after its "
                    f"commit (entry {c.closed_seq})",
                    dataset=c.dataset,
                    block=b,
                    time=run.start_time,
                    **where,
                )
            )
    return out


def check_data_versions(r: Replay, dvc: DvcIndex) -> tuple[list[Finding], dict[str, Any]]:
    """Every charge's data version (its own, else its blocks') must be known to DVC."""
    out: list[Finding] = []
    users: dict[str, list[Charge]] = {}
    for c in r.charges.values():
        version = c.data_version
        if version is None:
            own = {
                r.blocks[(c.dataset, b)].data_version
                for b in c.blocks
                if (c.dataset, b) in r.blocks
            }
            own.discard(None)
            version = own.pop() if len(own) == 1 else None
        if version is None:
            out.append(
                finding(
                    "data_version_missing",
                    f"reservation {c.id} (entry {c.seq}, "
                    f"{c.dataset}/{','.join(c.blocks)}) records no data version: nobody can tell "
                    "which data it was charged for",
                    reservation=c.id,
                    seq=c.seq,
                    time=c.time,
                )
            )
            continue
        users.setdefault(version, []).append(c)
    found = {}
    for version, charges in sorted(users.items()):
        where = dvc.locate(version)
        found[version] = where
        if where is None:
            first = charges[0]
            out.append(
                finding(
                    "data_version_unknown",
                    f"data version {version} of {len(charges)} "
                    f"reservation(s) (first {first.id}, entry {first.seq}) is not in DVC "
                    f"(searched: {dvc.searched})",
                    data_version=version,
                    reservation=first.id,
                    seq=first.seq,
                    time=charges[-1].time,
                )
            )
    summary = {
        "root": str(dvc.root) if dvc.root else None,
        "searched": dvc.searched,
        "versions": [
            {"data_version": v, "found_in": w, "reservations": len(users[v])}
            for v, w in found.items()
        ],
    }
    return out, summary


def check_pending(
    r: Replay, *, now: datetime, stale_hours: float
) -> tuple[list[Finding], dict[str, list[dict[str, Any]]]]:
    out = []
    pending, aborted = [], []
    for c in r.charges.values():
        if c.status == "aborted":
            aborted.append(c.to_dict())
        if c.status != "pending":
            continue
        t = parse_time(c.time)
        age = (now - t).total_seconds() / 3600 if t is not None else math.inf
        row = c.to_dict() | {"age_hours": age, "stale": age >= stale_hours}
        pending.append(row)
        if age >= stale_hours:
            out.append(
                finding(
                    "reservation_pending",
                    f"reservation {c.id} (entry {c.seq}, "
                    f"{c.dataset}/{','.join(c.blocks)}) has been pending {age:.1f} h (limit "
                    f"{stale_hours:g} h): a crashed run? It stays charged; close it with "
                    f"`dpgov ledger abort {c.id} --reason ...`",
                    reservation=c.id,
                    seq=c.seq,
                    time=c.time,
                )
            )
    return out, {"pending": pending, "aborted": aborted}


def policies_in_force(rows: Sequence[RawEntry], current_sha: str) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for e in rows:
        p = e.payload
        if p is None or not isinstance(p.get("policy_sha256"), str):
            continue
        sha = p["policy_sha256"]
        row = seen.setdefault(
            sha,
            {
                "sha256": sha,
                "paths": [],
                "first_seen": e.time,
                "last_seen": e.time,
                "entries": {},
                "current": sha == current_sha,
            },
        )
        row["last_seen"] = e.time
        row["entries"][e.kind] = row["entries"].get(e.kind, 0) + 1
        path = p.get("policy_path")
        if isinstance(path, str) and path not in row["paths"]:
            row["paths"].append(path)
    return sorted(seen.values(), key=lambda x: x["first_seen"])


# ------------------------------------------------------------------------------------ the lot


def audit_ledger(
    ledger: Ledger,
    policy: LoadedPolicy,
    options: AuditOptions,
    *,
    dvc_root: Any = None,
    tracking_uri: str | None = None,
) -> AuditReport:
    """The whole audit of an open ledger: what ``dpgov audit`` and the ``audit`` flow run.

    Reads and verifies the ledger, starts composing every block's charges in worker
    processes as soon as its rows are read, reads the tracking store and the DVC index
    meanwhile, then runs every check (:func:`audit`)."""
    from dpgov.report.collect import dvc_index, snapshot_ledger, snapshot_tracking

    eps = Epsilons()
    replays: list[Replay] = []

    def compose_early(rows: list[Any]) -> None:
        replays.append(replay(rows))
        eps.start(block_requests(replays[0], policy, deep=options.deep))

    led = snapshot_ledger(ledger, policy.policy.budget, on_rows=compose_early)
    tracking = snapshot_tracking(tracking_uri)
    index = dvc_index(dvc_root)
    return audit(led, tracking, index, policy, options, eps=eps, replayed=replays[0])


def audit(
    ledger: LedgerSnapshot,
    tracking: TrackingSnapshot,
    dvc: DvcIndex,
    policy: LoadedPolicy,
    options: AuditOptions,
    *,
    eps: Epsilons | None = None,
    replayed: Replay | None = None,
) -> AuditReport:
    """Every check; the report of what was found and what a reader needs to see."""
    from dpgov.report.statement import release_statement

    now_iso = options.now.isoformat(timespec="seconds")
    eps = eps if eps is not None else Epsilons()
    findings: list[Finding] = []

    chain_findings, ledger_summary = check_chain(ledger)
    findings += chain_findings
    r = replayed if replayed is not None else replay(ledger.rows)
    findings += r.problems
    findings += ledger.problems
    findings += check_projection(r, ledger)

    anchors_summary: dict[str, Any] = {"checked": False}
    if not tracking.available:
        findings.append(
            finding(
                "tracking_unavailable",
                f"{tracking.error}: anchors, runs, aliases and releases were not checked",
            )
        )
    elif tracking.anchors_error:
        findings.append(finding("tracking_unavailable", tracking.anchors_error))
    else:
        anchor_findings, anchors_summary = check_anchors(
            ledger.rows, tracking.anchors, hmac_key_set=ledger.hmac_key_set
        )
        anchors_summary["checked"] = True
        findings += anchor_findings

    budget_findings, blocks = check_budgets(r, ledger, policy, eps, deep=options.deep, now=now_iso)
    findings += budget_findings

    gov = gov_entries(ledger.rows)
    release_findings, releases = check_releases(gov, tracking.models, policy)
    findings += release_findings
    run_findings, claimed, run_figures = check_runs(
        r, tracking.runs, eps, policy, tracking_ok=tracking.available, deep=options.deep
    )
    findings += run_findings
    data_findings, dvc_summary = check_data_versions(r, dvc)
    findings += data_findings
    pending_findings, reservations = check_pending(
        r, now=options.now, stale_hours=options.stale_hours
    )
    findings += pending_findings

    block_eps = {(b["dataset"], b["block"]): b["epsilon"] for b in blocks}
    for rel in releases:
        art = tracking.artifacts.get((rel["model"], rel["version"]))
        rel.update(release_statement(rel, art, r, eps, policy, block_eps))

    budget = policy.policy.budget
    eps.prefetch(
        [
            (merge_key([c.mechanism]), c.delta or budget.delta, c.accountant or budget.accountant)
            for c in r.charges.values()
            if c.status != "released"
            and not (c.mechanism == c.planned and c.epsilon_run is not None and c.delta)
        ]
    )
    runs = []
    for c in r.charges.values():
        run = claimed.get(c.id)
        runs.append(
            c.to_dict()
            | {
                "epsilon": charge_epsilon(c, eps, policy),
                "mlflow_run": run.run_id if run else c.run_id,
                "mlflow_status": run.status if run else None,
                "experiment": run.experiment if run else None,
            }
        )

    # --since: what happened before is left out of the listings (integrity never is)
    before = 0
    if options.since is not None:
        since = options.since

        def recent(t: str | None) -> bool:
            parsed = parse_time(t)
            return parsed is None or parsed >= since

        kept = []
        for f in findings:
            if f.kind in TIMELESS or recent(f.time):
                kept.append(f)
            else:
                before += 1
        findings = kept
        runs = [x for x in runs if recent(x["time"])]
        reservations = {k: [x for x in v if recent(x["time"])] for k, v in reservations.items()}
        for b in blocks:
            b["burn_down"] = [p for p in b["burn_down"] if recent(p["time"])]

    counts = {
        "entries": len(ledger.rows),
        "blocks": len(r.blocks),
        "reservations": len(r.charges),
        "by_status": _count(c.status for c in r.charges.values()),
        "mlflow_runs": len(tracking.runs),
        "dp_runs": sum(1 for run in tracking.runs if is_dp_run(run)),
        "models": len(tracking.models),
        "releases": len(releases),
        "findings_by_kind": _count(f.kind for f in findings),
        "epsilon_compositions": eps.computed,
        "run_figures": run_figures,
    }
    return AuditReport(
        findings=findings,
        generated=now_iso,
        since=options.since.isoformat() if options.since else None,
        policy={
            "path": str(policy.path),
            "sha256": policy.sha256,
            "budget": policy.policy.budget.model_dump(),
        },
        ledger=ledger_summary,
        anchors=anchors_summary,
        tracking={"uri": tracking.uri, "available": tracking.available, "error": tracking.error},
        dvc=dvc_summary,
        blocks=blocks,
        runs=runs,
        reservations=reservations,
        policies=policies_in_force(ledger.rows, policy.sha256),
        releases=releases,
        counts=counts,
        findings_before_since=before,
    )
