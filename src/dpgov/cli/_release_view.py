"""How ``dpgov demo`` shows its second outcome: the release policy it recorded (and why), the
gate under it, the author's approval, the promotion and the audit."""

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
    if release.get("author_may_approve"):
        out.print("approvals: the run's author may approve (approvals.allow_author: true)")
    before = release.get("gate_before")
    if before:
        render_gate({**before, "hint": False})
    approval = release.get("approval")
    if approval:
        out.print(
            f"approved by {approval['by']} (the author; ledger entry {approval['ledger_seq']})"
        )
    promotion = release.get("promotion")
    if promotion:
        out.print(
            f"promoted: {promotion['model']} version {promotion['version']} → "
            f"@{promotion['alias']} (ledger entry {promotion['promotion_seq']}, gate re-checked "
            f"at entry {promotion['decision_seq']})"
        )
    out.print(f"release: {release['status']}")
    audit = release.get("audit") or {}
    findings = audit.get("findings") or []
    verdict = "CLEAN" if audit.get("ok") and not findings else f"{len(findings)} FINDING(S)"
    out.print(f"audit: {verdict}, {len(findings)} findings (dpgov audit shows the full report)")
    for f in findings:
        out.print(f"  {f.get('kind')}: {f.get('detail')}")
