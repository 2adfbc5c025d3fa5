"""Approval: show the gate, pause for an approver's signed answer, then promote or refuse.

The flow runs the gate under the policy in force (Markdown artifact: what the approver decides
on), then pauses with :class:`ApprovalInput` as its form (Prefect UI, or ``dpgov flows answer
FLOW_RUN_ID``). The form is typed text that the worker records, so the worker, not the
approver, would be who acts: an answer counts only with the approver's SSH signature over the
canonical message the form shows (``ssh-keygen -Y sign -n dpgov-approval``), verified against
the key the policy in force lists for them (``approvals.ssh_keys``). An unsigned answer, or one
whose signature does not verify, records nothing, and the flow says to run ``dpgov approve``
(or ``dpgov refuse``) as the approver. On a signed *approve* it records the approval and
promotes (the promotion re-checks the whole gate; a blocked promotion is reported, nothing
moves, and the flow run fails: state Failed, ``dpgov flows approval`` exits 1); on a signed
*refuse* it records the refusal. A pause that nobody answers within
``timeout_seconds`` fails the flow run, and nothing is recorded.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field, ValidationError, model_validator

from dpgov.errors import Refused, UsageError
from dpgov.gate import approvals
from dpgov.gate.candidate import load_candidate
from dpgov.gate.in_force import policy_in_force
from dpgov.identity import Identity
from dpgov.ledger import Ledger
from dpgov.ledger.releases import binding_of
from dpgov.tracking.registry import Registry
from pipelines import run_names, tasks
from pipelines.governed import run_gate


class ApprovalInput(RunInput):
    """An approver's answer: approve or refuse, who, and a note (a refusal's reason)."""

    decision: Literal["approve", "refuse"] = Field(description="approve or refuse")
    approver: str = Field(min_length=1, max_length=128, description="who decides")
    note: str = Field(default="", max_length=2000, description="why (required to refuse)")
    signature: str = Field(
        default="",
        max_length=16000,
        description="the approver's SSH signature over the message shown (needed to count)",
    )

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


def unsigned_answer(model: str, version: str, answer: ApprovalInput, why: str) -> dict[str, Any]:
    """What the flow returns when an answer does not count: nothing was recorded."""
    command = "approve" if answer.decision == "approve" else "refuse"
    return {
        "model": model,
        "version": version,
        "decision": answer.decision,
        "approver": answer.approver,
        "status": "not recorded",
        "reason": (
            f"{why}; nothing recorded: run `dpgov {command} {model} {version}` as "
            f"{answer.approver}, or answer with their signature (approvals.ssh_keys)"
        ),
    }


@flow(name="approval", flow_run_name=run_names.APPROVAL_NAME, persist_result=False)
def approval(
    model: str,
    version: str,
    alias: str | None = None,
    timeout_seconds: int = 7 * 24 * 3600,
    poll_interval: int = 10,
    announce: bool = False,
) -> dict[str, Any]:
    """Pause for an approver's decision on ``model`` ``version``; then promote or refuse.
    ``announce``: say on stderr which flow run waits (for a terminal)."""
    ledger = Ledger.open()
    try:
        registry = Registry()
        facts, _ = load_candidate(registry, model, version)
        loaded = policy_in_force(ledger, facts.dataset)
        before = run_gate(model, version, loaded, ledger)
        failing = ", ".join(before["failing"]) or "none"
        binding = binding_of(ledger, model, str(facts.model_version))
        to_sign = (
            approvals.message_for("approval", model, str(facts.model_version), binding).decode()
            if binding is not None
            else "(no facts bound: the version cannot be approved)"
        )
        form = ApprovalInput.with_initial_data(
            description=(
                f"**{model} version {version}**: the gate currently "
                f"{'allows' if before['allowed'] else 'blocks'} it (failing: {failing}). "
                "Approve (the promotion re-checks every check) or refuse (give the reason). "
                "The answer counts only with your SSH signature (`ssh-keygen -Y sign -n "
                "dpgov-approval -f KEY`) over this message (decision: refusal to refuse):"
                f"\n\n```\n{to_sign}```"
            ),
        )
        if announce:
            import sys

            from prefect.runtime import flow_run

            print(
                f"flow run {flow_run.id} waits for an answer: dpgov flows answer {flow_run.id} "
                "--decision approve|refuse --by NAME [--note TEXT] (or the Prefect UI); it "
                "counts only signed, else run `dpgov approve` as the approver",
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
        if not answer.signature.strip():
            return unsigned_answer(model, version, answer, "the answer is not signed")
        rules = loaded.policy.approvals
        who = Identity(rules.identity_of(answer.approver), "ssh-signature")
        common: dict[str, Any] = {
            "model": model,
            "version": version,
            "by": answer.approver,
            "policy": loaded,
            "ledger": ledger,
            "registry": registry,
            "signature": answer.signature,
            "who": who,
        }
        out: dict[str, Any] = {
            "model": model,
            "version": version,
            "decision": answer.decision,
            "approver": answer.approver,
            "gate_before": before,
        }
        try:
            if answer.decision == "refuse":
                entry, _ = approvals.record_refusal(reason=answer.note, **common)
                return {**out, "status": "refused", "ledger_seq": entry.seq}
            entry, _ = approvals.record_approval(note=answer.note, **common)
        except UsageError as err:
            return unsigned_answer(
                model, version, answer, str(err).removesuffix("; nothing recorded")
            )
        out["ledger_seq"] = entry.seq
        try:
            promoted = tasks.promote(model, version, loaded, ledger, alias)
        except Refused as err:
            # the approval stays recorded; the run fails (state Failed, exit 1): a release that
            # did not ship must not read as a success
            after = run_gate(model, version, loaded, ledger)
            failing = ", ".join(after["failing"]) or "none"
            raise Refused(
                f"{model} version {version}: approved (ledger entry {entry.seq}), promotion "
                f"blocked by {failing}: {err}"
            ) from err
        return {**out, "status": "promoted", "promotion": promoted.to_dict()}
    finally:
        ledger.close()
