"""The empirical audit as the gate sees it: the recorded lower bound beside the claimed ε.

``dpgov audit-model`` (:mod:`dpgov.training.audit_model`) appends one ``empirical_audit``
entry to the ledger per audit (a record that changes no budget, chained like gate decisions;
its own reservation and commit carry the charge) and logs the same figures on the candidate's
MLflow run. The gate reads the newest entry for the model version from the ledger, never from
the tracking store: what a release depends on is covered by the chain.

Check ``empirical_epsilon``: fails when the recorded lower bound exceeds the claimed ε (a
privacy bug is proven, whatever the policy says); under ``release.require_empirical_audit:
true`` it fails when no audit is recorded; otherwise it is off, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpgov.contracts import exceeds

if TYPE_CHECKING:
    from dpgov.ledger import Ledger
    from dpgov.policy.schema import Policy

AUDIT_KIND = "empirical_audit"  # the ledger entry kind
ARTIFACT_EMPIRICAL_AUDIT = "empirical_audit.json"  # on the candidate's MLflow run
METRIC_LOWER_BOUND = "empirical_epsilon_lower_bound"
METRIC_CLAIMED = "empirical_epsilon_claimed"
METRIC_CEILING = "empirical_epsilon_ceiling"
CHECK_NAME = "empirical_epsilon"

# a gate line: name, observed, limit, passed, reason (dpgov.gate.decision.Check's fields)
Line = tuple[str, float | None, float | None, bool, str]


@dataclass(frozen=True)
class EmpiricalAudit:
    """One recorded audit of a model version (the ledger entry's payload, typed)."""

    model: str
    version: str
    epsilon_lower_bound: float
    epsilon_claimed: float
    ceiling: float
    canaries: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    threat_model: str
    seq: int | None = None  # the ledger entry

    @classmethod
    def from_payload(cls, payload: dict[str, Any], seq: int | None = None) -> EmpiricalAudit:
        return cls(
            model=str(payload["model"]),
            version=str(payload["version"]),
            epsilon_lower_bound=float(payload["epsilon_lower_bound"]),
            epsilon_claimed=float(payload["epsilon_claimed"]),
            ceiling=float(payload["ceiling"]),
            canaries=int(payload["canaries"]),
            guesses=int(payload["guesses"]),
            correct=int(payload["correct"]),
            delta=float(payload["delta"]),
            confidence=float(payload["confidence"]),
            threat_model=str(payload["threat_model"]),
            seq=seq,
        )

    @property
    def passed(self) -> bool:
        return not exceeds(self.epsilon_lower_bound, self.epsilon_claimed)


def latest_audit(ledger: Ledger, model: str, version: str) -> EmpiricalAudit | None:
    """The newest ``empirical_audit`` entry for ``model`` version ``version`` (None: none)."""
    found = None
    for entry in ledger.entries(kind=AUDIT_KIND):
        p = entry.payload
        if str(p.get("model")) == model and str(p.get("version")) == str(version):
            found = EmpiricalAudit.from_payload(p, seq=entry.seq)
    return found


def empirical_check(policy: Policy, audit: EmpiricalAudit | None) -> Line:
    """The ``empirical_epsilon`` line (the decision makes it a Check)."""
    required = policy.release.require_empirical_audit
    if audit is None:
        if required:
            return (
                CHECK_NAME,
                None,
                None,
                False,
                "no empirical audit recorded and the policy requires one "
                "(release.require_empirical_audit): run `dpgov audit-model MODEL VERSION`",
            )
        return (
            CHECK_NAME,
            None,
            None,
            True,
            "off: no empirical audit recorded (release.require_empirical_audit: false)",
        )
    lb, claimed = audit.epsilon_lower_bound, audit.epsilon_claimed
    figures = (
        f"lower bound ε ≥ {lb:.3f} ({audit.threat_model}, {audit.correct}/{audit.guesses} "
        f"guesses right of {audit.canaries} canaries, {audit.confidence:.0%}, ceiling "
        f"{audit.ceiling:.3f}) vs claimed ε {claimed:.3f} at δ {audit.delta:g}"
    )
    if audit.passed:
        return (CHECK_NAME, lb, claimed, True, f"{figures}: no violation shown")
    return (CHECK_NAME, lb, claimed, False, f"{figures}: the claimed ε is violated")


def latest_audits(entries: Iterable[Any]) -> dict[tuple[str, str], EmpiricalAudit]:
    """The newest ``empirical_audit`` of each (model, version) among ledger entries (anything
    with ``seq``, ``kind`` and ``payload``; unreadable payloads are skipped)."""
    out: dict[tuple[str, str], EmpiricalAudit] = {}
    for e in entries:
        if e.kind != AUDIT_KIND or not isinstance(e.payload, dict):
            continue
        try:
            audit = EmpiricalAudit.from_payload(e.payload, seq=e.seq)
        except (KeyError, TypeError, ValueError):
            continue
        out[(audit.model, audit.version)] = audit
    return out


def empirical_text(audit: dict[str, Any] | None) -> str:
    """The statement's sentence on the empirical audit (``audit``: an EmpiricalAudit as a
    dict, or None when none is recorded)."""
    if not audit:
        return (
            "Empirical audit: none recorded (dpgov audit-model); the ε above is an upper bound "
            "computed from what the code says it did, not measured."
        )
    verdict = (
        "no violation shown"
        if not exceeds(audit["epsilon_lower_bound"], audit["epsilon_claimed"])
        else "the claimed ε is VIOLATED"
    )
    return (
        f"Empirical audit (ledger entry {audit.get('seq')}, {audit['threat_model']}, "
        f"{audit['canaries']} canaries): lower bound ε ≥ {audit['epsilon_lower_bound']:.3f} at "
        f"{audit['confidence']:.0%} confidence beside the claimed ε "
        f"{audit['epsilon_claimed']:.3f} at δ = {audit['delta']:g} ({verdict}; the most "
        f"this audit could show, every guess right, is {audit['ceiling']:.3f})."
    )
