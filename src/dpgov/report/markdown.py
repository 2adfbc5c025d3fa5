"""The audit's findings as Markdown: the ``audit-report`` artifact the audit flow publishes."""

from __future__ import annotations

from typing import Any


def audit_markdown(report: dict[str, Any]) -> str:
    """A verdict line, the scope, and one table row per finding of a ``dpgov audit --json``
    report (as :func:`dpgov.report.audit.run_audit` returns it)."""
    findings = report.get("findings") or []
    verdict = "CLEAN" if report.get("ok") else f"{len(findings)} FINDING(S)"
    lines = [f"# audit: {verdict}", "", f"scope: {report.get('scope', 'dpgov audit')}", ""]
    if findings:
        lines += ["| kind | detail |", "|---|---|"]
        for f in findings:
            detail = str(f.get("detail", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{f.get('kind')}` | {detail} |")
    return "\n".join(lines) + "\n"
