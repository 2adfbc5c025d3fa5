"""The audit on a schedule: everything ``dpgov audit`` checks, as a flow with a Markdown
artifact of the findings (``audit-report``). A run with findings ends Completed with
``ok: false`` in its result; the findings are the result, not a crash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow

from pipelines import tasks


def run_audit(policy: str | None, dvc_root: Path | None, stale_hours: float) -> dict[str, Any]:
    """What ``dpgov audit --json`` reports (:func:`dpgov.report.audit.audit_ledger`)."""
    from dpgov.policy import load_policy
    from dpgov.report.audit import AuditOptions, audit_ledger
    from dpgov.report.collect import open_ledger

    loaded = load_policy(Path(policy) if policy else None)
    ledger = open_ledger()
    try:
        report = audit_ledger(
            ledger,
            loaded,
            AuditOptions(now=datetime.now(UTC), stale_hours=stale_hours),
            dvc_root=dvc_root,
        )
    finally:
        ledger.close()
    return {**report.to_dict(), "scope": "dpgov audit (ledger, budgets, releases, runs, data)"}


def audit_markdown(report: dict[str, Any]) -> str:
    findings = report.get("findings") or []
    verdict = "CLEAN" if report.get("ok") else f"{len(findings)} FINDING(S)"
    lines = [f"# audit: {verdict}", "", f"scope: {report.get('scope', 'dpgov audit')}", ""]
    if findings:
        lines += ["| kind | detail |", "|---|---|"]
        for f in findings:
            detail = str(f.get("detail", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{f.get('kind')}` | {detail} |")
    return "\n".join(lines) + "\n"


@flow(name="audit", persist_result=False)
def audit(
    policy: str | None = None, dvc_root: str | None = None, stale_hours: float = 24.0
) -> dict[str, Any]:
    """Verify the ledger and everything that depends on it; publish the findings."""
    report = tasks.audit(policy, dvc_root, stale_hours)
    tasks.publish_markdown(audit_markdown(report), "audit-report", "dpgov audit findings")
    return {
        "ok": bool(report.get("ok")),
        "findings": report.get("findings") or [],
        "scope": report.get("scope"),
    }
