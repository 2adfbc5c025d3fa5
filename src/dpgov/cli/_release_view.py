"""How ``dpgov demo`` shows its second outcome: the release policy it recorded (and why), the
gate under it, the approval (by the author, or by a second authenticated identity), the
promotion, what the release statement says of who approved, and the audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpgov.cli._output import console


def render_release(release: dict[str, Any], render_gate: Callable[[dict[str, Any]], None]) -> None:
    out = console()
    seq = release.get("policy_seq")
    recorded = f"ledger entry {seq}" if seq is not None else "already in force"
    out.print(
        f"[bold]release[/bold]: policy {release['policy_file']} put in force for the dataset "
        f"(dpgov policy set; {recorded}, sha256 {str(release['policy_sha256'])[:12]}…)"
    )
    out.print(f"why: {release['policy_reason']}")
    approver = release.get("approver")
    if approver:
        out.print(
            f"approvals: a second authenticated identity approves: {approver['identity']} "
            f"({approver['authenticated_by']}); the run's author may not "
            "(approvals.allow_author: false)"
        )
    elif release.get("author_may_approve"):
        out.print("approvals: the run's author may approve (approvals.allow_author: true)")
    before = release.get("gate_before")
    if before:
        render_gate({**before, "hint": False})
        _fairness_line(before)
    approval = release.get("approval")
    if approval:
        author = approval.get("author")
        who = (
            "the author"
            if not approver or approval["by"] == author
            else f"{approval.get('authenticated_by')}, not the author {author}"
        )
        out.print(f"approved by {approval['by']} ({who}; ledger entry {approval['ledger_seq']})")
    promotion = release.get("promotion")
    if promotion:
        out.print(
            f"promoted: {promotion['model']} version {promotion['version']} → "
            f"@{promotion['alias']} (ledger entry {promotion['promotion_seq']}, gate re-checked "
            f"at entry {promotion['decision_seq']})"
        )
    out.print(f"release: {release['status']}")
    statement = release.get("statement")
    if statement:
        said = statement.get("self_approval") or (
            f"approved by {', '.join(statement.get('approvers') or []) or 'nobody'}"
        )
        out.print(f"statement: {said}")
    audit = release.get("audit") or {}
    findings = audit.get("findings") or []
    verdict = "CLEAN" if audit.get("ok") and not findings else f"{len(findings)} FINDING(S)"
    out.print(f"audit: {verdict}, {len(findings)} findings (dpgov audit shows the full report)")
    for f in findings:
        out.print(f"  {f.get('kind')}: {f.get('detail')}")


def _fairness_line(decision: dict[str, Any]) -> None:
    """The FNR checks that judged the release, in one line: those off (their reason, and the
    policy's ``why`` above) and those on (their limit, and whether they pass)."""
    checks = [c for c in decision.get("checks") or [] if str(c["name"]).startswith("fnr_gap")]
    if not checks:
        return
    off = [c for c in checks if c.get("limit") is None]
    on = [c for c in checks if c.get("limit") is not None]
    parts = [
        f"{', '.join(c['name'] for c in off if c['reason'] == reason)} {reason}"
        for reason in dict.fromkeys(c["reason"] for c in off)
    ]
    if off:
        parts[-1] += " (why: above)"
    for c in on:
        limit = c["limit"]
        shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
        parts.append(f"{c['name']} on, limit {shown}: {'pass' if c['passed'] else 'FAIL'}")
    console().print("FNR checks: " + "; ".join(parts))
