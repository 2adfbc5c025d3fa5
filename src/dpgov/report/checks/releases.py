"""Check 5: releases.

Every registry alias must point where the ledger's newest effective promotion to that alias put
it; each promotion must have replaced what the previous promotion left (otherwise the alias was
moved outside the gate in between); each promotion must rest on a gate decision on that
version that allowed it, made before it; each approver that decision counted must have a
standing approval (their latest action on that version, before the decision, is an approval),
and at least the required number of them. A promotion named by a ``promotion_failed`` entry
never took effect and is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dpgov.contracts import TAG_PREFIX
from dpgov.policy import LoadedPolicy, approver_key
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import RawEntry
from dpgov.report.rows import ApprovalRow, PromotionCheck, ReleaseRow
from dpgov.tracking.records import ModelRecord

GOV_KINDS = (
    "gate_decision",
    "approval",
    "refusal",
    "promotion",
    "promotion_failed",
    "alias_deleted",  # a recall that left no earlier release removed the alias
)


@dataclass(frozen=True)
class GovEntry:
    """A governance entry (decision, approval, refusal, promotion) with a readable payload."""

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


class _Promotions:
    """Each promotion checked once against its decision and the approvals it counted."""

    def __init__(self, gov: Sequence[GovEntry], policy: LoadedPolicy, out: list[Finding]):
        self.by_seq = {e.seq: e for e in gov}
        self.policy = policy
        self.out = out
        self.checked: dict[int, PromotionCheck] = {}
        self.votes: dict[tuple[str, str | None], list[GovEntry]] = {}
        for e in gov:
            if e.kind in ("approval", "refusal"):
                key = (str(e.payload.get("model")), _v(e.payload.get("version")))
                self.votes.setdefault(key, []).append(e)

    def check(self, p: GovEntry) -> PromotionCheck:
        if p.seq in self.checked:
            return self.checked[p.seq]
        model, version = str(p.payload.get("model")), _v(p.payload.get("version"))
        alias = str(p.payload.get("alias"))
        where = {"model": model, "version": version, "alias": alias, "seq": p.seq}
        d = self.by_seq.get(p.payload.get("decision_seq"))  # type: ignore[arg-type]
        info = PromotionCheck(decision_seq=d.seq if d else None)
        self.checked[p.seq] = info
        if (
            d is None
            or d.kind != "gate_decision"
            or d.seq > p.seq
            or str(d.payload.get("model")) != model
            or _v(d.payload.get("version")) != version
        ):
            self.out.append(
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
            self.out.append(
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
        info.decision_ok = True
        info.policy_sha256 = d.payload.get("policy_sha256")
        info.decision_time = d.time
        problems = self._approvals(d, model, version, info)
        if problems:
            self.out.append(
                finding(
                    "release_without_approvals",
                    f"promotion of {model} version {version} to "
                    f"@{alias} (entry {p.seq}), decision entry {d.seq}: {'; '.join(problems)}",
                    time=p.time,
                    **where,
                )
            )
        else:
            info.approvals_ok = True
        return info

    def _approvals(
        self, d: GovEntry, model: str, version: str | None, info: PromotionCheck
    ) -> list[str]:
        """What is wrong with the approvals decision ``d`` counted (standing ones listed)."""
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
            required = self.policy.policy.approvals.required
        latest: dict[str, GovEntry] = {}
        for e in self.votes.get((model, version), []):
            if e.seq < d.seq:
                latest[approver_key(str(e.payload.get("by", "")))] = e
        problems = []
        for name in approvers:
            standing = latest.get(approver_key(name))
            if standing is None or standing.kind != "approval":
                problems.append(f"{name} has no standing approval before it")
            else:
                info.approvals.append(
                    ApprovalRow(
                        by=name,
                        seq=standing.seq,
                        time=standing.time,
                        note=standing.payload.get("note", ""),
                    )
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
        return problems


def check_releases(
    gov: Sequence[GovEntry], models: Sequence[ModelRecord], policy: LoadedPolicy
) -> tuple[list[Finding], list[ReleaseRow]]:
    """Aliases against promotions, promotions against decisions and approvals. Pure."""
    out: list[Finding] = []
    promotions = _Promotions(gov, policy, out)
    history: dict[tuple[str, str], list[GovEntry]] = {}
    deletions = [e for e in gov if e.kind == "alias_deleted"]
    for p in sorted([*effective_promotions(gov), *deletions], key=lambda e: e.seq):
        key = (str(p.payload.get("model")), str(p.payload.get("alias")))
        history.setdefault(key, []).append(p)

    # every alias change went through the gate: each promotion replaced what the previous
    # one (or a recall's deletion) had left there
    for (model, alias), hist in sorted(history.items()):
        before: str | None = None
        for p in hist:
            if p.kind == "alias_deleted":
                before = None
                continue
            promotions.check(p)
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
            if last.kind == "alias_deleted":
                out.append(
                    finding(
                        "alias_outside_gate",
                        f"{m.name} @{alias} points at version {version}, but a recall deleted "
                        f"the alias (entry {last.seq}) and no promotion set it since: the alias "
                        "was set outside the gate",
                        **where,
                    )
                )
                continue
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
            check = promotions.check(last)
            vrec = m.versions.get(version)
            releases.append(
                ReleaseRow(
                    model=m.name,
                    alias=alias,
                    version=version,
                    promotion_seq=last.seq,
                    promoted=last.time,
                    promoted_by=last.actor,
                    replaced=_v(last.payload.get("replaced")),
                    run_id=(vrec.run_id if vrec else None) or last.payload.get("run_id"),
                    tags=dict(vrec.tags) if vrec else {},
                    check=check,
                )
            )
    return out, releases


def _dpgov_tagged(m: ModelRecord) -> bool:
    return any(k.startswith(TAG_PREFIX) for v in m.versions.values() for k in v.tags)
