"""The empirical privacy audit as a flow: ``audit-model`` (one task, never retried: it spends
privacy on the candidate's blocks) and a Markdown artifact of its figures
(``empirical-audit``). A run whose lower bound exceeds the claimed ε fails (state Failed,
after the artifact is published): a proven privacy bug must not read as a success.

The work is :func:`dpgov.training.audit_model.audit_candidate`; this module only wires it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from dpgov.errors import Refused
from dpgov.ledger import Ledger
from dpgov.tracking.registry import Registry
from dpgov.training.audit_model import audit_candidate
from dpgov.training.canary_audit import THREAT_DESCRIPTIONS, WHITE_BOX
from pipelines import tasks


@task(name="audit-model", **tasks.ONCE)
def audit_model_task(
    model: str, version: str, canaries: int, threat_model: str, data: str | None
) -> dict[str, Any]:
    """Reserve, run the canary audit, commit, record (ledger and MLflow): spends privacy."""
    ledger = Ledger.open()
    try:
        outcome = audit_candidate(
            model,
            version,
            ledger=ledger,
            registry=Registry(),
            canaries=canaries,
            threat_model=threat_model,
            data=data,
        )
    finally:
        ledger.close()
    return outcome.to_dict()


def audit_markdown(result: dict[str, Any]) -> str:
    """The figures a reader needs, with what the number can and cannot show."""
    verdict = "passed" if result["passed"] else "**VIOLATION: the claimed ε is wrong**"
    return "\n".join(
        [
            f"# Empirical privacy audit: {result['model']} version {result['version']}",
            "",
            f"{verdict}; {THREAT_DESCRIPTIONS[result['threat_model']]}",
            "",
            "| figure | value |",
            "|---|---|",
            f"| ε lower bound ({result['confidence']:.0%}) | {result['epsilon_lower_bound']:.3f} |",
            f"| ε claimed (δ {result['delta']:g}) | {result['epsilon_claimed']:.3f} |",
            f"| ceiling (every guess right) | {result['ceiling']:.3f} |",
            f"| canaries / guesses / right | {result['canaries']} / {result['guesses']} / "
            f"{result['correct']} |",
            f"| ledger entry | {result['ledger_seq']} |",
        ]
    )


@flow(name="empirical-audit", persist_result=False)
def empirical_audit(
    model: str,
    version: str | int,  # `-p version=3` arrives as a number
    canaries: int = 1000,
    threat_model: str = WHITE_BOX,
    data: str | None = None,
) -> dict[str, Any]:
    """Audit one candidate; publish the figures; fail when the bound exceeds the claim."""
    result = audit_model_task(model, str(version), canaries, threat_model, data)
    tasks.publish_markdown(audit_markdown(result), "empirical-audit", "dpgov empirical audit")
    if not result["passed"]:
        raise Refused(
            f"audit-model: the lower bound ε ≥ {result['epsilon_lower_bound']:.3f} exceeds the "
            f"claimed ε {result['epsilon_claimed']:.3f}; see the empirical-audit artifact"
        )
    return result
