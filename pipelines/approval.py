"""Approval: show the gate, pause for an approver's typed answer, then promote or refuse.

The flow runs the gate (Markdown artifact: what the approver decides on), then pauses with
:class:`ApprovalInput` as its form (Prefect UI, or ``dpgov flows answer FLOW_RUN_ID``). On
*approve* it records the approval and promotes (the promotion re-checks the whole gate; a
blocked promotion is reported, nothing moves); on *refuse* it records the refusal, which blocks
the version until the same approver approves it later. A pause that nobody answers within
``timeout_seconds`` fails the flow run, and nothing is recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field, ValidationError, model_validator

from dpgov.errors import Refused, UsageError
from dpgov.ledger import Ledger
from dpgov.policy import load_policy
from pipelines import tasks
from pipelines.governed import run_gate


class ApprovalInput(RunInput):
    """An approver's answer: approve or refuse, who, and a note (a refusal's reason)."""

    decision: Literal["approve", "refuse"] = Field(description="approve or refuse")
    approver: str = Field(min_length=1, max_length=128, description="who decides")
    note: str = Field(default="", max_length=2000, description="why (required to refuse)")

    @model_validator(mode="after")
    def _refusal_has_reason(self) -> ApprovalInput:
        if not self.approver.strip():
            raise ValueError("approver is empty")
        if self.decision == "refuse" and not self.note.strip():
            raise ValueError("a refusal needs a note giving the reason")
        return self


def parse_answer(data: dict[str, Any]) -> ApprovalInput:
    """Validate an answer; UsageError naming the first missing or bad field."""
    try:
        return ApprovalInput.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "missing":
            raise UsageError(
                f"approval input: {loc} is missing (needs decision, approver, and a note to refuse)"
            ) from err
        where = f"{loc}: " if loc else ""
        raise UsageError(f"approval input: {where}{msg}") from err


@flow(name="approval", persist_result=False)
def approval(
    model: str,
    version: str,
    policy: str | None = None,
    alias: str | None = None,
    timeout_seconds: int = 7 * 24 * 3600,
    poll_interval: int = 10,
    announce: bool = False,
) -> dict[str, Any]:
    """Pause for an approver's decision on ``model`` ``version``; then promote or refuse.
    ``announce``: say on stderr which flow run waits (for a terminal)."""
    loaded = load_policy(Path(policy) if policy else None)
    ledger = Ledger.open()
    try:
        before = run_gate(model, version, loaded, ledger)
        failing = ", ".join(before["failing"]) or "none"
        form = ApprovalInput.with_initial_data(
            description=(
                f"**{model} version {version}**: the gate currently "
                f"{'allows' if before['allowed'] else 'blocks'} it (failing: {failing}). "
                "Approve (the promotion re-checks every check) or refuse (give the reason)."
            ),
        )
        if announce:
            import sys

            from prefect.runtime import flow_run

            print(
                f"flow run {flow_run.id} waits for an answer: dpgov flows answer {flow_run.id} "
                "--decision approve|refuse --by NAME [--note TEXT] (or the Prefect UI)",
                file=sys.stderr,
                flush=True,
            )
        try:
            answer = pause_flow_run(
                wait_for_input=form, timeout=timeout_seconds, poll_interval=poll_interval
            )
        except FlowPauseTimeout as err:
            raise Refused(
                f"{model} version {version}: no answer within {timeout_seconds} s; nothing "
                "recorded (run the approval again)"
            ) from err
        out: dict[str, Any] = {
            "model": model,
            "version": version,
            "decision": answer.decision,
            "approver": answer.approver,
            "gate_before": before,
        }
        if answer.decision == "refuse":
            entry = tasks.record_refusal(
                model, version, answer.approver, answer.note, loaded, ledger
            )
            return {**out, "status": "refused", "ledger_seq": entry.seq}
        entry = tasks.record_approval(model, version, answer.approver, answer.note, loaded, ledger)
        out["ledger_seq"] = entry.seq
        try:
            promoted = tasks.promote(model, version, loaded, ledger, alias)
        except Refused as err:
            after = run_gate(model, version, loaded, ledger)
            return {
                **out,
                "status": "approved, promotion blocked",
                "reason": str(err),
                "gate": after,
            }
        return {**out, "status": "promoted", "promotion": promoted.to_dict()}
    finally:
        ledger.close()
