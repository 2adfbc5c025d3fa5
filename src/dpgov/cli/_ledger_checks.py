"""What ``dpgov ledger verify`` checks beyond the chain: the tail against the anchors (the
anchor file and the tracking store's), and the signatures against the policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpgov.ledger import Ledger, Verification
from dpgov.ledger.anchoring import (
    AnchorPoint,
    TailProblem,
    anchor_file,
    check_tail,
    entry_hashes,
    file_anchor_points,
    ledger_name,
)


@dataclass
class Beyond:
    """The anchors and the signature policy, as ``ledger verify`` reports them."""

    anchors: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    problems: list[TailProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signatures_problem: str | None = None

    @property
    def failures(self) -> list[str]:
        out = [p.detail for p in self.problems]
        if self.signatures_problem:
            out.append(self.signatures_problem)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.anchors,
            "sources": self.sources,
            "problems": [{"kind": p.kind, "seq": p.seq, "detail": p.detail} for p in self.problems],
            "notes": self.notes,
        }


def tracking_anchor_points(uri: str | None = None) -> tuple[list[AnchorPoint], str | None]:
    """The tracking store's anchors, or why they could not be read (nothing is created)."""
    from dpgov.tracking import reader

    snap = reader.snapshot(uri, release_artifacts=False)
    if snap.error or snap.anchors_error:
        return [], snap.error or snap.anchors_error
    return [
        AnchorPoint(a.seq, a.hash, a.time, f"tracking store, run {a.run_id}") for a in snap.anchors
    ], None


def beyond_the_chain(
    ledger: Ledger,
    result: Verification,
    *,
    tracking: bool = True,
) -> Beyond:
    """The tail against every anchor at hand, and the signature rule of the policy in force
    (the packaged policy's when the entries cannot be trusted: the verdict fails then)."""
    from dpgov.errors import Refused
    from dpgov.gate.in_force import policy_in_force
    from dpgov.policy import load_policy

    out = Beyond()
    points, problems = file_anchor_points(ledger=ledger_name(ledger.engine))
    if anchor_file() is not None:
        out.sources["file"] = len(points)
        out.notes += [p for p in problems if result.entries or "does not exist" not in p]
    if tracking:
        found, why = tracking_anchor_points()
        if why:
            out.notes.append(f"tracking store anchors not checked: {why}")
        else:
            out.sources["tracking store"] = len(found)
        points += found
    out.anchors = len(points)
    if result.ok:
        hashes = entry_hashes(ledger.engine)
        head = max(hashes) if hashes else 0
        out.problems = check_tail(hashes, head, points, result.restores)
    try:
        rules = policy_in_force(ledger).policy.ledger
    except Refused:  # entries that cannot be trusted: verification fails anyway
        rules = load_policy(None).policy.ledger
    if rules.require_signatures:
        out.signatures_problem = result.signatures_problem()
    return out
