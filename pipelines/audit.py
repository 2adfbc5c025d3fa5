"""The audit on a schedule: everything ``dpgov audit`` checks, as a flow with a Markdown
artifact of the findings (``audit-report``). A run with findings fails (state Failed, after the
artifact is published; ``dpgov flows run audit/... --wait`` exits 1): a scheduled audit that
found something must not read as a success in the Prefect UI.

The work is :func:`dpgov.report.audit.run_audit` (the ``audit`` task runs it) and
:func:`dpgov.report.markdown.audit_markdown`; this module only wires them.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from dpgov.errors import Refused
from dpgov.report.audit import run_audit
from dpgov.report.markdown import audit_markdown
from pipelines import tasks

__all__ = ["audit", "audit_markdown", "run_audit"]


@flow(name="audit", persist_result=False)
def audit(dvc_root: str | None = None, stale_hours: float = 24.0) -> dict[str, Any]:
    """Verify the ledger and everything that depends on it (under the policy in force, and
    every entry under the policy in force when it was written); publish the findings. Refused
    (the flow run fails) when there are findings."""
    report = tasks.audit(dvc_root, stale_hours)
    tasks.publish_markdown(audit_markdown(report), "audit-report", "dpgov audit findings")
    findings = report.get("findings") or []
    if not report.get("ok") or findings:
        kinds = sorted({str(f.get("kind") or "?") for f in findings})
        raise Refused(
            f"audit: {len(findings)} finding(s) ({', '.join(kinds) or 'not ok'}); see the "
            "audit-report artifact or `dpgov audit`"
        )
    return {
        "ok": bool(report.get("ok")),
        "findings": report.get("findings") or [],
        "scope": report.get("scope"),
    }
