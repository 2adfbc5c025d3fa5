"""Check: releases that depended on a non-private reference (issue 16).

A release depended on the non-private reference when the gate decision it rests on judged a
fairness widening against the reference's subgroup gaps (a ``*_gap_widening`` line with an
observed value, :func:`dpgov.gate.reference.decision_used_reference`). Each such release is
listed (:class:`ReferenceRelease`, with the reference's run from the version's candidate facts)
and its privacy statement says so. Under a policy in force with ``release.allow_reference:
false`` each one is also a ``release_used_reference`` finding: a release the policy in force
would not have judged that way.

Pure over what was read: the ledger rows, the releases and their runs' artifacts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dpgov.gate.reference import decision_used_reference
from dpgov.policy import LoadedPolicy
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import RawEntry
from dpgov.report.rows import ReleaseRow
from dpgov.tracking.records import ReleaseArtifacts


@dataclass(frozen=True)
class ReferenceRelease:
    """A release whose gate decision compared it with a non-private reference."""

    model: str
    version: str
    alias: str
    decision_seq: int
    reference_run: str | None  # the reference's MLflow run (None: not in the facts read)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        run = f" (run {self.reference_run})" if self.reference_run else ""
        return (
            f"its release gate (decision entry {self.decision_seq}) judged fairness widening "
            f"against a non-private reference model{run}: a model trained WITHOUT differential "
            "privacy on the same patients, whose metrics only were kept"
        )


def reference_releases(
    rows: Sequence[RawEntry],
    releases: Sequence[ReleaseRow],
    artifacts: Mapping[tuple[str, str], ReleaseArtifacts],
) -> list[ReferenceRelease]:
    """The releases whose gate decision used the non-private reference."""
    by_seq = {r.seq: r for r in rows if r.kind == "gate_decision" and r.payload is not None}
    out = []
    for rel in releases:
        seq = rel.check.decision_seq
        d = by_seq.get(seq) if seq is not None else None
        if d is None or seq is None or d.payload is None:
            continue
        checks = [c for c in d.payload.get("checks") or [] if isinstance(c, dict)]
        if not decision_used_reference(checks):
            continue
        art = artifacts.get((rel.model, rel.version))
        facts = (art.facts if art else None) or {}
        ref = facts.get("reference") if isinstance(facts.get("reference"), dict) else None
        out.append(
            ReferenceRelease(
                model=rel.model,
                version=rel.version,
                alias=rel.alias,
                decision_seq=seq,
                reference_run=str(ref["run_id"]) if ref and ref.get("run_id") else None,
            )
        )
    return out


def check_reference(listed: Sequence[ReferenceRelease], policy: LoadedPolicy) -> list[Finding]:
    """A finding for each listed release when the policy in force forbids the reference."""
    if policy.policy.release.allow_reference:
        return []
    return [
        finding(
            "release_used_reference",
            f"{x.model} version {x.version} holds @{x.alias} although {x.sentence()}; the "
            f"policy in force (sha256 {policy.sha256[:12]}…) has release.allow_reference: "
            "false",
            model=x.model,
            version=x.version,
            seq=x.decision_seq,
        )
        for x in listed
    ]
