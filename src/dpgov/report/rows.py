"""The audit report as typed rows: what the checks produce, the HTML page and the command line
show, and ``dpgov audit --json`` prints.

Every row serialises itself with ``to_dict()`` to the JSON shape documented in docs/audit.md
(keys in the order they are printed). The report is built by :func:`dpgov.report.audit.audit`;
nothing here computes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from dpgov.redaction import redact
from dpgov.report.findings import Finding

if TYPE_CHECKING:
    from dpgov.accounting import DpSgdMechanism
    from dpgov.policy.schema import Budget
    from dpgov.report.replay import Charge
    from dpgov.tracking.records import Anchor


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: rows (anything with ``to_dict``) and pydantic models as
    dicts, sequences as lists; other values unchanged."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Row:
    """A dataclass row whose JSON is its fields, in order."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ the ledger


@dataclass(frozen=True)
class PolicySummary(Row):
    """The policy in force: its file, hash and budget."""

    path: str
    sha256: str
    budget: Budget


@dataclass(frozen=True)
class LedgerSummary(Row):
    """The entries as stored, and what the chain check found."""

    url: str
    entries: int
    head_seq: int
    head_hash: str | None
    first_time: str | None
    last_time: str | None
    chain_ok: bool
    first_bad_seq: int | None
    reason: str | None
    hmac_key_set: bool
    signed_entries: int
    unsigned_entries: int
    signatures_checked: bool
    kinds: dict[str, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", redact(self.url))  # credentials never shown


@dataclass(frozen=True)
class AnchorSummary:
    """The anchors read from the tracking store (``checked`` False: it could not be read)."""

    checked: bool = False
    count: int = 0
    matched: int = 0
    newest_seq: int | None = None
    newest_time: str | None = None
    unanchored_entries: int = 0
    anchors: tuple[Anchor, ...] = ()  # the newest 50

    def to_dict(self) -> dict[str, Any]:
        if not self.checked:
            return {"checked": False}
        return {
            "count": self.count,
            "matched": self.matched,
            "newest_seq": self.newest_seq,
            "newest_time": self.newest_time,
            "unanchored_entries": self.unanchored_entries,
            "list": [a.to_dict() for a in self.anchors],
            "checked": True,
        }


@dataclass(frozen=True)
class TrackingSummary(Row):
    uri: str
    available: bool
    error: str | None

    def __post_init__(self) -> None:  # credentials never shown (JSON, HTML, terminal)
        object.__setattr__(self, "uri", redact(self.uri))
        object.__setattr__(self, "error", redact(self.error) if self.error else self.error)


@dataclass(frozen=True)
class DataVersionRow(Row):
    """A data version the ledger's charges name, and where DVC holds it (None: nowhere)."""

    data_version: str
    found_in: str | None
    reservations: int


@dataclass(frozen=True)
class DvcSummary(Row):
    root: str | None
    searched: str
    versions: list[DataVersionRow]


# ------------------------------------------------------------------------------ budgets


@dataclass(frozen=True)
class BurnPoint(Row):
    """A block's ε after one reservation, as recorded then, or recomputed now."""

    time: str
    seq: int
    epsilon: float
    delta: float | None
    reservation: str | None
    source: str  # "recorded" | "recomputed"


@dataclass
class BlockRow(Row):
    """One block: ε recomputed from its entries (None: not composable), the ledger's own
    figure, the policy's limit, and its charges by status."""

    dataset: str
    block: str
    patients: int
    retired: bool
    data_version: str | None
    registered: str
    epsilon: float | None
    epsilon_ledger: float | None
    epsilon_limit: float
    remaining: float | None
    delta: float
    accountant: str
    charges: int
    pending: int
    committed: int
    aborted: int
    released: int
    burn_down: list[BurnPoint] = field(default_factory=list)
    # issue 16: both figures recomputed, and the rule whose figure `epsilon` is
    epsilon_fixed: float | None = None  # the accountant's composition
    epsilon_adaptive: float | None = None  # the RDP filter's ε over the policy's orders
    composition: str = "fixed"


# ------------------------------------------------------------------------------ reservations


@dataclass(frozen=True)
class ChargeRow(Row):
    """One reservation as rebuilt from the entries."""

    reservation: str
    seq: int
    time: str
    actor: str
    dataset: str
    blocks: list[str]
    status: str
    planned: DpSgdMechanism
    mechanism: DpSgdMechanism
    closed_seq: int | None
    closed_time: str | None
    reason: str | None
    run_id: str | None
    data_version: str | None
    policy_sha256: str | None
    delta: float | None
    accountant: str | None

    @staticmethod
    def fields_of(c: Charge) -> dict[str, Any]:
        """A charge's fields, for this row or a row that extends it."""
        return {
            "reservation": c.id,
            "seq": c.seq,
            "time": c.time,
            "actor": c.actor,
            "dataset": c.dataset,
            "blocks": list(c.blocks),
            "status": c.status,
            "planned": c.planned,
            "mechanism": c.mechanism,
            "closed_seq": c.closed_seq,
            "closed_time": c.closed_time,
            "reason": c.close_reason,
            "run_id": c.run_id,
            "data_version": c.data_version,
            "policy_sha256": c.policy_sha256,
            "delta": c.delta,
            "accountant": c.accountant,
        }

    @classmethod
    def of(cls, c: Charge) -> ChargeRow:
        return cls(**ChargeRow.fields_of(c))


@dataclass(frozen=True)
class PendingRow(ChargeRow):
    """A reservation still pending, and for how long."""

    age_hours: float
    stale: bool


@dataclass(frozen=True)
class RunRow(ChargeRow):
    """A reservation with its own ε and the MLflow run that claims it."""

    epsilon: float | None
    mlflow_run: str | None
    mlflow_status: str | None
    experiment: str | None


@dataclass(frozen=True)
class ReservationLists(Row):
    """Reservations left open, and those aborted (both stay charged)."""

    pending: list[PendingRow]
    aborted: list[ChargeRow]


# ------------------------------------------------------------------------------ releases


@dataclass(frozen=True)
class ApprovalRow(Row):
    """A standing approval a gate decision counted."""

    by: str
    seq: int
    time: str
    note: Any


@dataclass
class PromotionCheck:
    """What a promotion rests on: its decision, and the approvals that decision counted."""

    decision_seq: int | None
    approvals: list[ApprovalRow] = field(default_factory=list)
    decision_ok: bool = False
    approvals_ok: bool = False
    policy_sha256: str | None = None  # the decision's (shown once the decision is sound)
    decision_time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision_seq": self.decision_seq,
            "approvals": [a.to_dict() for a in self.approvals],
            "decision_ok": self.decision_ok,
            "approvals_ok": self.approvals_ok,
        }
        if self.decision_ok:
            out.update(policy_sha256=self.policy_sha256, decision_time=self.decision_time)
        return out


@dataclass(frozen=True)
class PrivacyStatement:
    """The guarantee a released version carries, written from the ledger
    (:func:`dpgov.report.statement.release_statement`). Values read from the run's candidate
    facts are kept as training wrote them."""

    model: str
    version: str
    alias: str
    promoted: str | None
    private: bool
    reservation: str | None
    ledger_charge: str  # the reservation's status, or "missing"
    unit_of_privacy: str
    records_per_patient: int
    neighbouring: str
    sampling: str
    secure_rng: Any
    max_grad_norm: Any
    policy_sha256: str | None
    approvers: list[str]
    not_covered: tuple[str, ...]
    delta: Any
    accountant: Any
    epsilon: float | None  # this run alone, recomputed (None: not composable or no charge)
    epsilon_logged: Any
    mechanism: DpSgdMechanism | None  # what the reservation committed (None: no charge)
    dataset: Any
    blocks: list[Any]
    data_version: Any
    ledger_entries: list[int]
    n_train_patients: Any
    cumulative_epsilon_per_block: dict[Any, float | None]
    epsilon_per_block_limit: float
    block_delta: float
    # the test metrics: {"private": False} when exact, else the DP-evaluated release and its
    # cost (dpgov.report.checks.evaluations.EvaluatedRelease as a dict, "private" added)
    evaluation: dict[str, Any] | None = None
    # the newest empirical audit of the version (dpgov.gate.empirical.EmpiricalAudit as a dict)
    empirical: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "mechanism":
                if value is not None:
                    out.update(
                        noise_multiplier=value.noise_multiplier,
                        sample_rate=value.sample_rate,
                        steps=value.steps,
                        mechanism=value.to_dict(),
                    )
                continue
            out[f.name] = list(value) if f.name == "not_covered" else value
        return out


@dataclass(frozen=True)
class ReleaseStatement:
    """A release's statement, as data and as text, with its subgroup metrics and gaps (as
    the run's candidate facts hold them), utility, the statement the run logged, and why an
    artifact could not be read."""

    statement: PrivacyStatement
    text: str
    subgroups: list[Any]
    gaps: list[Any]
    utility: dict[str, Any]
    logged_statement: dict[str, Any] | None
    artifact_problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "statement": self.statement.to_dict(),
            "statement_text": self.text,
            "subgroups": self.subgroups,
            "gaps": self.gaps,
            "utility": self.utility,
            "logged_statement": self.logged_statement,
            "artifact_problems": self.artifact_problems,
        }


@dataclass
class ReleaseRow:
    """A model version holding an alias through the gate."""

    model: str
    alias: str
    version: str
    promotion_seq: int
    promoted: str
    promoted_by: str
    replaced: str | None
    run_id: str | None
    tags: dict[str, str]
    check: PromotionCheck
    statement: ReleaseStatement | None = None  # attached once budgets are known

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "alias": self.alias,
            "version": self.version,
            "promotion_seq": self.promotion_seq,
            "promoted": self.promoted,
            "promoted_by": self.promoted_by,
            "replaced": self.replaced,
            "run_id": self.run_id,
            "tags": self.tags,
            **self.check.to_dict(),
        }
        if self.statement is not None:
            out.update(self.statement.to_dict())
        return out


# ------------------------------------------------------------------------------ policies


@dataclass
class PolicyRow(Row):
    """A policy the ledger's entries were made under, by the SHA-256 of its file."""

    sha256: str
    paths: list[str]
    first_seen: str
    last_seen: str
    entries: dict[str, int]  # entries made under it, by kind
    current: bool


# ------------------------------------------------------------------------------ the report


@dataclass(frozen=True)
class RunFigureCounts(Row):
    """How the ε figures runs logged were checked: against a figure the ledger recorded, by
    a from-scratch composition, or (beyond the composition budget) not at all."""

    compared_with_recorded: int = 0
    recomputed: int = 0
    not_checked: int = 0


@dataclass(frozen=True)
class Counts(Row):
    entries: int
    blocks: int
    reservations: int
    by_status: dict[str, int]
    mlflow_runs: int
    dp_runs: int
    models: int
    releases: int
    findings_by_kind: dict[str, int]
    epsilon_compositions: int
    run_figures: RunFigureCounts


@dataclass
class AuditReport:
    """Every finding, and what a data protection officer reads beside them."""

    findings: list[Finding]
    generated: str
    since: str | None
    policy: PolicySummary
    ledger: LedgerSummary
    anchors: AnchorSummary
    tracking: TrackingSummary
    dvc: DvcSummary
    blocks: list[BlockRow]
    runs: list[RunRow]
    reservations: ReservationLists
    policies: list[PolicyRow]
    releases: list[ReleaseRow]
    counts: Counts
    findings_before_since: int = 0
    # releases whose gate used the non-private reference (dpgov.report.checks.reference)
    reference_releases: list[Any] = field(default_factory=list)
    # releases whose test metrics are DP-evaluated, with their cost
    # (dpgov.report.checks.evaluations)
    evaluated_releases: list[Any] = field(default_factory=list)

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
            "counts": self.counts.to_dict(),
            "policy": self.policy.to_dict(),
            "ledger": self.ledger.to_dict(),
            "anchors": self.anchors.to_dict(),
            "tracking": self.tracking.to_dict(),
            "dvc": self.dvc.to_dict(),
            "blocks": [b.to_dict() for b in self.blocks],
            "runs": [r.to_dict() for r in self.runs],
            "reservations": self.reservations.to_dict(),
            "policies": [p.to_dict() for p in self.policies],
            "releases": [r.to_dict() for r in self.releases],
            "reference_releases": [x.to_dict() for x in self.reference_releases],
            "evaluated_releases": [x.to_dict() for x in self.evaluated_releases],
        }
