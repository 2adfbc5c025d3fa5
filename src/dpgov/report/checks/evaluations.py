"""Check: DP-evaluated releases (issue 17).

Every release (a version holding an alias through the gate) whose candidate facts record a
DP-evaluated release of its test metrics (``private_evaluation``) is listed with its cost as
the ledger charged it: the test blocks, the attempt, the ε the run recorded and the ε
recomputed from the mechanism the release's reservation committed (:class:`EvaluatedRelease`).

Findings:

- ``release_not_dp_evaluated``: a release whose facts record no DP-evaluated release although
  the gate decision it rests on judged under ``evaluation.private`` (the decision's
  ``evaluation`` summary), or the policy in force has ``evaluation.private: true``: its test
  metrics were exact, released without differential privacy.
- ``evaluation_not_charged``: a DP-evaluated release whose reservation is not in the ledger, is
  not committed, or charged other blocks than the release names (its test patients' privacy
  loss is not on record as the release states it).

Pure over what was read: the ledger rows (decisions), the replayed charges, the releases and
their runs' artifacts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dpgov.accounting import AccountantFailed
from dpgov.gate.dp_checks import RELEASE_ACCOUNTANT
from dpgov.gate.dp_facts import PrivateEvaluation
from dpgov.policy import LoadedPolicy
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import Epsilons, RawEntry, Replay
from dpgov.report.rows import ReleaseRow
from dpgov.tracking.records import ReleaseArtifacts


@dataclass(frozen=True)
class EvaluatedRelease:
    """A release whose test metrics come from a DP-evaluated release, and what it cost."""

    model: str
    version: str
    alias: str
    epsilon: float  # as the release recorded it, at ``delta``
    epsilon_ledger: float | None  # recomputed from the committed charge (None: not charged)
    delta: float
    test_blocks: list[str]
    attempt: int
    reservation: str | None
    charge: str  # the reservation's status, "missing", or "on other blocks (…)"
    noise_source: str

    def to_dict(self) -> dict[str, Any]:
        return {"private": True, **asdict(self)}

    def sentence(self) -> str:
        eps = self.epsilon_ledger if self.epsilon_ledger is not None else self.epsilon
        return (
            f"its test metrics are one DP-evaluated release (attempt {self.attempt}): "
            f"ε = {eps:.4f} at δ = {self.delta:g}, charged to test block(s) "
            f"{', '.join(self.test_blocks) or 'none'} (reservation "
            f"{self.reservation or 'none'}: {self.charge})"
        )


def release_evaluation(art: ReleaseArtifacts | None) -> PrivateEvaluation | str | None:
    """The DP-evaluated release in a release's facts; None when the facts record none; why it
    cannot be read when it cannot."""
    facts = (art.facts if art else None) or {}
    raw = facts.get("private_evaluation")
    if raw is None:
        return None
    try:
        return PrivateEvaluation.model_validate(raw)
    except ValueError as err:
        return f"private_evaluation unreadable: {str(err).splitlines()[0]}"


def evaluated_releases(
    releases: Sequence[ReleaseRow],
    artifacts: Mapping[tuple[str, str], ReleaseArtifacts],
    r: Replay,
    eps: Epsilons,
    policy: LoadedPolicy,
) -> list[EvaluatedRelease]:
    """Every release whose facts hold a DP-evaluated release, with its cost."""
    out = []
    for rel in releases:
        pe = release_evaluation(artifacts.get((rel.model, rel.version)))
        if not isinstance(pe, PrivateEvaluation):
            continue
        charge = r.charges.get(pe.reservation_id) if pe.reservation_id else None
        status = charge.status if charge is not None else "missing"
        if charge is not None and set(charge.blocks) != set(pe.test_blocks):
            status = f"on other blocks ({', '.join(sorted(charge.blocks))})"
        eps_ledger = None
        if charge is not None and status == "committed":
            try:
                eps_ledger = eps.of(
                    [charge.mechanism],
                    delta=pe.delta,
                    accountant=RELEASE_ACCOUNTANT,  # exact for one Gaussian
                )
            except (AccountantFailed, ValueError):
                eps_ledger = None
        out.append(
            EvaluatedRelease(
                model=rel.model,
                version=rel.version,
                alias=rel.alias,
                epsilon=pe.epsilon,
                epsilon_ledger=eps_ledger,
                delta=pe.delta,
                test_blocks=list(pe.test_blocks),
                attempt=pe.attempt,
                reservation=pe.reservation_id,
                charge=status,
                noise_source=pe.noise_source,
            )
        )
    return out


def _decision_was_private(rows: Sequence[RawEntry], seq: int | None) -> bool:
    """Whether the gate decision ``seq`` judged under ``evaluation.private`` (its recorded
    ``evaluation`` summary)."""
    if seq is None:
        return False
    d = next((x for x in rows if x.seq == seq and x.kind == "gate_decision"), None)
    ev = (d.payload or {}).get("evaluation") if d is not None else None
    return isinstance(ev, dict) and bool(ev.get("private"))


def check_evaluations(
    rows: Sequence[RawEntry],
    releases: Sequence[ReleaseRow],
    artifacts: Mapping[tuple[str, str], ReleaseArtifacts],
    listed: Sequence[EvaluatedRelease],
    policy: LoadedPolicy,
) -> list[Finding]:
    """The findings of the module docstring."""
    out: list[Finding] = []
    in_force = policy.policy.evaluation.private
    for rel in releases:
        art = artifacts.get((rel.model, rel.version))
        if art is None or art.facts is None:
            continue  # unread facts are reported by the release checks
        pe = release_evaluation(art)
        if isinstance(pe, PrivateEvaluation):
            continue
        private_gate = _decision_was_private(rows, rel.check.decision_seq)
        if not (private_gate or in_force) and pe is None:
            continue
        why = (
            pe
            if isinstance(pe, str)
            else "its facts record no DP-evaluated release: the test metrics were exact"
        )
        under = (
            f"its gate decision (entry {rel.check.decision_seq}) judged under evaluation.private"
            if private_gate
            else f"the policy in force (sha256 {policy.sha256[:12]}…) has evaluation.private: true"
        )
        out.append(
            finding(
                "release_not_dp_evaluated",
                f"{rel.model} version {rel.version} holds @{rel.alias}: {why}; {under}",
                model=rel.model,
                version=rel.version,
                seq=rel.check.decision_seq,
            )
        )
    for x in listed:
        if x.charge == "committed":
            continue
        out.append(
            finding(
                "evaluation_not_charged",
                f"{x.model} version {x.version} holds @{x.alias}; its DP-evaluated release's "
                f"charge {x.reservation or '(none named)'} is {x.charge}: the test patients' "
                "privacy loss is not on record as the release states it",
                model=x.model,
                version=x.version,
                reservation=x.reservation,
            )
        )
    return out
