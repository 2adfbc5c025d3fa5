"""The audit: read the ledger, the tracking store and DVC; run every check; assemble the report.

:func:`audit_ledger` is what ``dpgov audit`` and the ``audit`` flow run: it reads the ledger
(:mod:`dpgov.report.ledger_snapshot`), starts composing every block's charges in worker
processes as soon as the rows are read, reads the tracking store meanwhile
(:mod:`dpgov.tracking.reader`) and the DVC index (:mod:`dpgov.report.dvc_index`), then calls
:func:`audit`, a pure function of what was read: every check of :mod:`dpgov.report.checks`,
and the typed report of :mod:`dpgov.report.rows`. ε is recomputed with :mod:`dpgov.accounting`
from the mechanisms the entries hold (:mod:`dpgov.report.replay`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dpgov.accounting import AccountantFailed
from dpgov.errors import Refused
from dpgov.gate.empirical import EmpiricalAudit, latest_audits
from dpgov.gate.in_force import policy_in_force
from dpgov.ledger import Ledger
from dpgov.ledger.anchoring import ledger_name
from dpgov.policy import LoadedPolicy, load_policy
from dpgov.redaction import redact
from dpgov.report.checks import count_by
from dpgov.report.checks.anchors import FileAnchors, check_anchors, read_file_anchors
from dpgov.report.checks.budgets import block_requests, check_budgets
from dpgov.report.checks.chain import check_chain
from dpgov.report.checks.data_versions import check_data_versions
from dpgov.report.checks.evaluations import check_evaluations, evaluated_releases
from dpgov.report.checks.membership import (
    MembershipFacts,
    check_membership,
    read_membership,
    reconcile_budgets,
)
from dpgov.report.checks.pending import check_pending
from dpgov.report.checks.policies import policies_in_force
from dpgov.report.checks.policy_in_force import check_policy_in_force
from dpgov.report.checks.projection import check_projection
from dpgov.report.checks.reference import check_reference, reference_releases
from dpgov.report.checks.release_facts import Digests, check_release_facts, release_digests
from dpgov.report.checks.releases import check_releases, gov_entries
from dpgov.report.checks.runs import check_runs, is_dp_run
from dpgov.report.dvc_index import DvcIndex, dvc_index
from dpgov.report.findings import TIMELESS, Finding, finding
from dpgov.report.ledger_snapshot import LedgerSnapshot, open_ledger, snapshot_ledger
from dpgov.report.replay import Charge, Epsilons, RawEntry, Replay, merge_key, replay
from dpgov.report.rows import (
    AnchorSummary,
    AuditReport,
    ChargeRow,
    Counts,
    PolicySummary,
    RunRow,
    TrackingSummary,
)
from dpgov.report.statement import release_statement
from dpgov.report.times import parse_time
from dpgov.tracking import reader
from dpgov.tracking.records import RunRecord, TrackingSnapshot

SCOPE = "dpgov audit (ledger, budgets, releases, runs, data)"


@dataclass(frozen=True)
class AuditOptions:
    now: datetime
    since: datetime | None = None
    stale_hours: float = 24.0
    deep: bool = False  # verify the ε every reservation recorded, not only the newest


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
    eps = Epsilons()
    replays: list[Replay] = []

    def compose_early(rows: list[RawEntry]) -> None:
        replays.append(replay(rows))
        eps.start(block_requests(replays[0], policy, deep=options.deep))

    led = snapshot_ledger(ledger, policy.policy.budget, on_rows=compose_early)
    tracking = reader.snapshot(tracking_uri)
    index = dvc_index(dvc_root)
    files = read_file_anchors(ledger_name(ledger.engine))
    members = read_membership(ledger, policy)
    digests = release_digests(tracking.models, tracking_uri) if tracking.available else {}
    return audit(
        led,
        tracking,
        index,
        policy,
        options,
        eps=eps,
        replayed=replays[0],
        file_anchors=files,
        membership=members,
        release_digests=digests,
    )


def run_audit(
    policy: str | Path | None, dvc_root: str | Path | None, stale_hours: float
) -> dict[str, Any]:
    """The audit of the configured ledger as ``dpgov audit --json`` reports it, with its
    ``scope``: what the ``audit`` flow publishes."""
    ledger = open_ledger()
    try:  # the policy in force (a file only where a caller asks for a what-if)
        loaded = load_policy(Path(policy)) if policy else _in_force(ledger)
        report = audit_ledger(
            ledger,
            loaded,
            AuditOptions(now=datetime.now(UTC), stale_hours=stale_hours),
            dvc_root=Path(dvc_root) if dvc_root else None,
        )
    finally:
        ledger.close()
    return {**report.to_dict(), "scope": SCOPE}


def _in_force(ledger: Ledger) -> LoadedPolicy:
    """The ledger-wide policy in force; the packaged one on entries that cannot be trusted
    (the audit reports those)."""
    try:
        return policy_in_force(ledger)
    except Refused:
        return load_policy(None)


def audit(
    ledger: LedgerSnapshot,
    tracking: TrackingSnapshot,
    dvc: DvcIndex,
    policy: LoadedPolicy,
    options: AuditOptions,
    *,
    eps: Epsilons | None = None,
    replayed: Replay | None = None,
    file_anchors: FileAnchors | None = None,
    membership: MembershipFacts | None = None,
    release_digests: Digests | None = None,
) -> AuditReport:
    """Every check; the report of what was found and what a reader needs to see.
    ``release_digests``: the released versions' artifact digests as read now (None: the
    released facts are not checked against the ledger's bindings)."""
    now_iso = options.now.isoformat(timespec="seconds")
    eps = eps if eps is not None else Epsilons()
    findings: list[Finding] = []

    chain_findings, ledger_summary = check_chain(
        ledger, require_signatures=policy.policy.ledger.require_signatures
    )
    findings += chain_findings
    r = replayed if replayed is not None else replay(ledger.rows)
    findings += r.problems
    findings += ledger.problems
    findings += check_projection(r, ledger)
    findings += check_policy_in_force(ledger.rows)

    anchor_findings, anchors_summary = _anchors(ledger, tracking, file_anchors or FileAnchors())
    findings += anchor_findings

    budget_findings, blocks = check_budgets(r, ledger, policy, eps, deep=options.deep, now=now_iso)
    member_findings, per_patient = check_membership(ledger, r, membership, policy, eps)
    findings += reconcile_budgets(budget_findings, blocks, per_patient, r, ledger, policy, eps)
    findings += member_findings

    release_findings, releases = check_releases(gov_entries(ledger.rows), tracking.models, policy)
    findings += release_findings
    if release_digests is not None and tracking.available:
        findings += check_release_facts(ledger.rows, tracking.models, release_digests, policy)
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

    used_reference = reference_releases(ledger.rows, releases, tracking.artifacts)
    findings += check_reference(used_reference, policy)
    by_release = {(x.model, x.version, x.alias): x for x in used_reference}
    evaluated = evaluated_releases(releases, tracking.artifacts, r, eps, policy)
    findings += check_evaluations(ledger.rows, releases, tracking.artifacts, evaluated, policy)
    by_evaluation = {(x.model, x.version, x.alias): x for x in evaluated}

    block_eps = {(b.dataset, b.block): b.epsilon for b in blocks}
    audits = latest_audits(ledger.rows)  # empirical audits (dpgov.gate.empirical)
    for rel in releases:
        art = tracking.artifacts.get((rel.model, rel.version))
        ref = by_release.get((rel.model, rel.version, rel.alias))
        ev = by_evaluation.get((rel.model, rel.version, rel.alias))
        emp = audits.get((rel.model, rel.version))
        rel.statement = release_statement(rel, art, r, eps, policy, block_eps, ref, ev, emp)
        if emp is not None and not emp.passed:
            findings.append(empirical_violation(rel.model, rel.version, rel.alias, emp))

    runs = _run_rows(r, claimed, eps, policy)

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
        runs = [x for x in runs if recent(x.time)]
        reservations = type(reservations)(
            pending=[x for x in reservations.pending if recent(x.time)],
            aborted=[x for x in reservations.aborted if recent(x.time)],
        )
        for b in blocks:
            b.burn_down = [p for p in b.burn_down if recent(p.time)]

    counts = Counts(
        entries=len(ledger.rows),
        blocks=len(r.blocks),
        reservations=len(r.charges),
        by_status=count_by(c.status for c in r.charges.values()),
        mlflow_runs=len(tracking.runs),
        dp_runs=sum(1 for run in tracking.runs if is_dp_run(run)),
        models=len(tracking.models),
        releases=len(releases),
        findings_by_kind=count_by(f.kind for f in findings),
        epsilon_compositions=eps.computed,
        run_figures=run_figures,
    )
    return AuditReport(
        findings=findings,
        generated=now_iso,
        since=options.since.isoformat() if options.since else None,
        policy=PolicySummary(
            path=str(policy.path), sha256=policy.sha256, budget=policy.policy.budget
        ),
        ledger=ledger_summary,
        anchors=anchors_summary,
        tracking=TrackingSummary(
            uri=tracking.uri, available=tracking.available, error=tracking.error
        ),
        dvc=dvc_summary,
        blocks=blocks,
        runs=runs,
        reservations=reservations,
        policies=policies_in_force(ledger.rows, policy.sha256),
        releases=releases,
        counts=counts,
        findings_before_since=before,
        reference_releases=used_reference,
        evaluated_releases=evaluated,
    )


def own_anchors(anchors: list[Any], url: str) -> list[Any]:
    """The anchors of the ledger at ``url``. Several ledgers may anchor in one tracking store
    (a federation's sites, each its own ledger): when some anchors name this ledger (as
    :func:`dpgov.tracking.anchor.ledger_name` does, redacted), only those and the ones naming
    no ledger are its own. When none name it (a ledger and its store copied or restored
    elsewhere, so the names are the old path) every anchor is checked against it, as before."""
    names = {url, redact(url)}
    if not any(a.ledger in names for a in anchors):
        return list(anchors)
    return [a for a in anchors if a.ledger is None or a.ledger in names]


def _anchors(
    ledger: LedgerSnapshot, tracking: TrackingSnapshot, files: FileAnchors
) -> tuple[list[Finding], AnchorSummary]:
    """The anchor check over the tracking store's anchors and the anchor file's, or why the
    tracking store's could not be checked (it is unreadable)."""
    out: list[Finding] = []
    tracked = None
    if not tracking.available:
        out.append(
            finding(
                "tracking_unavailable",
                f"{tracking.error}: anchors, runs, aliases and releases were not checked",
            )
        )
    elif tracking.anchors_error:
        out.append(finding("tracking_unavailable", tracking.anchors_error))
    else:
        tracked = own_anchors(tracking.anchors, ledger.url)
    if tracked is None and not files.anchors and not files.problems:
        return out, AnchorSummary()
    found, summary = check_anchors(
        ledger.rows,
        [*(tracked or []), *files.anchors],
        restores=ledger.verification.restores,
        file_problems=files.problems,
    )
    return out + found, summary


def _run_rows(
    r: Replay, claimed: dict[str, RunRecord], eps: Epsilons, policy: LoadedPolicy
) -> list[RunRow]:
    """Every reservation's own ε and the run that claims it, in ledger order."""
    budget = policy.policy.budget
    eps.prefetch(
        [
            (merge_key([c.mechanism]), c.delta or budget.delta, c.accountant or budget.accountant)
            for c in r.charges.values()
            if c.status != "released"
            and not (c.mechanism == c.planned and c.epsilon_run is not None and c.delta)
        ]
    )
    rows = []
    for c in r.charges.values():
        run = claimed.get(c.id)
        rows.append(
            RunRow(
                **ChargeRow.fields_of(c),
                epsilon=charge_epsilon(c, eps, policy),
                mlflow_run=run.run_id if run else c.run_id,
                mlflow_status=run.status if run else None,
                experiment=run.experiment if run else None,
            )
        )
    return rows


def charge_epsilon(c: Charge, eps: Epsilons, policy: LoadedPolicy) -> float | None:
    """A charge's own ε at its δ: recorded at reservation when the plan ran in full."""
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


def empirical_violation(model: str, version: str, alias: str, audit: EmpiricalAudit) -> Finding:
    """A released version whose newest empirical audit's lower bound exceeds its claimed ε."""
    return Finding(
        "release_empirical_violation",
        f"{model} version {version} (@{alias}): its empirical audit (ledger entry "
        f"{audit.seq}, {audit.threat_model}) shows ε ≥ {audit.epsilon_lower_bound:.3f} at "
        f"{audit.confidence:.0%} confidence, above its claimed ε {audit.epsilon_claimed:.3f}",
        {"model": model, "version": version, "alias": alias, "seq": audit.seq},
    )
