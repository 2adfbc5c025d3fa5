"""Every entry against the policy in force when it was written.

The policy in force is ledger state (:mod:`dpgov.ledger.policies`): at each seq, a dataset's
own policy, else the ledger-wide one, else the packaged policy. This check replays the
``policy_set`` entries and judges:

- each reservation: it must name the SHA-256 of the policy then in force for its dataset,
  charge under that policy's budget (ε per block, δ, accountant), and leave no block above that
  policy's ε per block (``policy_not_in_force`` otherwise: it used another policy, or would
  have been refused under the one in force);
- each gate decision, approval, refusal and promotion: its policy SHA-256 must be that of the
  policy then in force for its dataset (when the entry names one) or of one then in force
  (ledger-wide or for some dataset) when it does not;
- each ``policy_set`` entry the rules do not allow (a set by someone who may not set policies,
  an approval by someone not eligible): ``policy_change_invalid``, and a policy whose recorded
  text does not match its hash or content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dpgov.contracts import exceeds
from dpgov.errors import Refused
from dpgov.ledger.policies import PolicyHistory, history
from dpgov.ledger.verified import POLICY_KIND, VPolicyEntry
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import RawEntry

GOV_KINDS = ("gate_decision", "approval", "refusal", "promotion")


def check_policy_in_force(rows: Sequence[RawEntry]) -> list[Finding]:
    """Findings for every entry written under a policy that was not in force."""
    entries = [
        VPolicyEntry(e.seq, e.time, e.actor, e.payload)
        for e in rows
        if e.kind == POLICY_KIND and e.payload is not None
    ]
    try:
        h = history(entries)
    except Refused as err:  # a policy entry whose content does not match its hash
        return [finding("policy_change_invalid", str(err), seq=getattr(err, "seq", None))]
    out = [
        finding("policy_change_invalid", f"ledger entry {seq} changed no policy: {why}", seq=seq)
        for seq, why in h.ignored
    ]
    for e in rows:
        if e.payload is None:
            continue
        if e.kind == "reservation":
            out += _reservation(e, h)
        elif e.kind in GOV_KINDS:
            out += _governance(e, h)
    return out


def _reservation(e: RawEntry, h: PolicyHistory) -> list[Finding]:
    p = e.payload or {}
    dataset = p.get("dataset") if isinstance(p.get("dataset"), str) else None
    rec = h.in_force(dataset, e.seq - 1)
    pol = rec.loaded.policy
    where: dict[str, Any] = {"seq": e.seq, "dataset": dataset, "reservation": p.get("reservation")}
    problems = []
    sha = p.get("policy_sha256")
    if sha != rec.sha256:
        problems.append(f"it names policy {str(sha)[:12]}… (in force: {rec.sha256[:12]}…)")
    budget: dict[str, Any] = p["budget"] if isinstance(p.get("budget"), dict) else {}
    for key, limit in (
        ("epsilon_per_block", pol.budget.epsilon_per_block),
        ("delta", pol.budget.delta),
        ("accountant", pol.budget.accountant),
    ):
        if budget.get(key) != limit:
            problems.append(
                f"it charged under budget.{key} {budget.get(key)!r} (in force {limit!r})"
            )
    after: dict[str, Any] = p["epsilon_after"] if isinstance(p.get("epsilon_after"), dict) else {}
    for block, eps in sorted(after.items()):
        if isinstance(eps, int | float) and exceeds(float(eps), pol.budget.epsilon_per_block):
            problems.append(
                f"it took block {block} to ε {float(eps):.4g}, over the ε per block "
                f"{pol.budget.epsilon_per_block:g} then in force (it would have been refused)"
            )
    if not problems:
        return []
    return [
        finding(
            "policy_not_in_force",
            f"reservation at entry {e.seq} ({dataset}) was not made under the policy in force "
            f"then ({_source(rec.seq)}): " + "; ".join(problems),
            time=e.time,
            **where,
        )
    ]


def _governance(e: RawEntry, h: PolicyHistory) -> list[Finding]:
    p = e.payload or {}
    sha = p.get("policy_sha256")
    dataset = p.get("dataset") if isinstance(p.get("dataset"), str) else None
    if dataset is not None:
        allowed = {h.in_force(dataset, e.seq - 1).sha256}
    else:  # which dataset it concerns is not on the entry: any policy then in force
        datasets = {r.dataset for r in h.changes if r.seq < e.seq}
        allowed = {h.in_force(ds, e.seq - 1).sha256 for ds in datasets | {None}}
    if sha in allowed:
        return []
    return [
        finding(
            "policy_not_in_force",
            f"{e.kind} at entry {e.seq} names policy {str(sha)[:12]}…, which was not in force "
            f"then (in force: {', '.join(sorted(s[:12] + '…' for s in allowed))})",
            time=e.time,
            seq=e.seq,
            model=p.get("model"),
            version=p.get("version"),
        )
    ]


def _source(seq: int) -> str:
    return f"set at entry {seq}" if seq else "the packaged policy"


__all__ = ["check_policy_in_force"]
