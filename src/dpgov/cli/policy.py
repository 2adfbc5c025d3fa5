"""``dpgov policy set | approve | show | history``: the policy in force is ledger state.

``set`` records a policy file's content and hash as a chained entry, for one dataset or the
whole ledger (:mod:`dpgov.ledger.policies` says who may, and when a change is only a proposal
that needs approvals first); ``approve`` approves such a proposal; ``show`` prints the policy in
force; ``history`` every change. Nothing else changes the policy that run, sweep, ``ledger
reserve``, schedule, the flows, the gate and promotion enforce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dpgov.cli._output import JsonOption, console, emit, resolve_prefix, table

policy_app = typer.Typer(
    help="The policy in force: set it (recorded on the ledger), approve a raise, show it.",
    no_args_is_help=True,
)

DatasetOption = typer.Option(
    None, "--dataset", help="One dataset's policy (default: the whole ledger's)."
)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")


@policy_app.command("set")
def set_(
    file: Path = typer.Argument(..., help="Policy YAML file to put in force."),
    dataset: str | None = DatasetOption,
    reason: str = typer.Option(..., "--reason", help="Why the policy changes (recorded)."),
    as_json: bool = JsonOption,
) -> None:
    """Put a policy in force (a chained entry: its text, content, SHA-256, scope, reason and
    who set it). A change that raises a limit over blocks with charges is recorded as a
    proposal: it takes effect once the approvers of the policy in force approve it."""
    from dpgov import names
    from dpgov.ledger import Ledger
    from dpgov.ledger.policies import set_policy
    from dpgov.policy import load_policy

    if dataset is not None:
        dataset = names.name(dataset, argument="--dataset")
    loaded = load_policy(file)  # bad input: one line, exit 2, nothing recorded
    ledger = Ledger.open()
    try:
        entry, action = set_policy(ledger, loaded, dataset=dataset, reason=reason)
    finally:
        ledger.close()
    data = {
        "action": action,
        "seq": entry.seq,
        "dataset": dataset,
        "sha256": loaded.sha256,
        "set_by": entry.actor,
        "raises": entry.payload.get("raises", []),
        "approvals_required": entry.payload.get("approvals_required", 0),
        "in_force": action == "set",
    }

    def render() -> None:
        where = f"dataset {dataset}" if dataset else "the whole ledger"
        if action == "set":
            typer.echo(
                f"policy {loaded.sha256[:12]} in force for {where} from ledger entry "
                f"{entry.seq} (set by {entry.actor})"
            )
        else:
            typer.echo(
                f"proposal {entry.seq}: policy {loaded.sha256[:12]} for {where} raises "
                f"{'; '.join(data['raises'])} over blocks with charges; NOT in force until "
                f"{data['approvals_required']} approver(s) run `dpgov policy approve "
                f"{entry.seq}`"
            )

    emit(as_json, data, render)


@policy_app.command("approve")
def approve(
    given: str = typer.Argument(
        ...,
        metavar="PROPOSAL",
        help="The proposal's ledger entry, or the start of its policy's sha256 (as `dpgov policy "
        "set` and `policy history` print them).",
    ),
    note: str = typer.Option("", "--note", help="Recorded with the approval."),
    as_json: bool = JsonOption,
) -> None:
    """Approve a proposed policy change; it takes effect with the last approval it needs."""
    from dpgov.ledger import Ledger
    from dpgov.ledger.policies import approve_proposal, policy_history

    ledger = Ledger.open()
    try:
        proposal = proposal_seq(policy_history(ledger), given)
        entry, prop = approve_proposal(ledger, proposal, note=note)
    finally:
        ledger.close()
    data = {"seq": entry.seq, "approved_by": entry.actor, **prop.to_dict()}

    def render() -> None:
        state = (
            f"in force from entry {entry.seq}"
            if prop.status == "in force"
            else f"{len(prop.approved_by)} of {prop.required} approvals"
        )
        typer.echo(f"proposal {proposal} approved by {entry.actor}: {state}")

    emit(as_json, data, render)


def proposal_seq(h: Any, given: str) -> int:
    """The ledger entry of the proposal ``given`` names: its entry number, or the start of the
    sha256 of the policy it proposes (among the open proposals). Unknown or ambiguous: one
    line, exit 2."""
    from dpgov.errors import UsageError

    text = given.strip()
    if text.isdigit() and (int(text) in h.proposals or len(text) < 6):
        return int(text)  # an entry number (approve_proposal says when it is no proposal)
    open_ = [p for p in h.proposals.values() if p.status == "open"]
    sha = resolve_prefix(
        text.lower(), [p.loaded.sha256 for p in open_], what="open proposal", option="PROPOSAL"
    )
    seqs = [p.seq for p in open_ if p.loaded.sha256 == sha]
    if len(seqs) > 1:
        raise UsageError(
            f"PROPOSAL {given!r}: {len(seqs)} open proposals propose this policy (entries "
            f"{', '.join(map(str, seqs))}): give the entry"
        )
    return seqs[0]


@policy_app.command("show")
def show(
    dataset: str | None = DatasetOption,
    as_json: bool = JsonOption,
) -> None:
    """The policy in force (for one dataset, or the whole ledger): its content, hash, and the
    entry that set it, by whom and why."""
    from dpgov import names
    from dpgov.ledger import Ledger
    from dpgov.ledger.policies import policy_history

    if dataset is not None:
        dataset = names.name(dataset, argument="--dataset")
    ledger = Ledger.open()
    try:
        h = policy_history(ledger)
    finally:
        ledger.close()
    rec = h.in_force(dataset)
    pending = [
        p.to_dict()
        for p in h.proposals.values()
        if p.status == "open" and (p.dataset == dataset or p.dataset is None)
    ]
    data: dict[str, Any] = {
        **rec.to_dict(),
        "scope": dataset,
        "policy": rec.loaded.policy.model_dump(mode="json"),
        "yaml": rec.loaded.text,
        "open_proposals": pending,
    }

    def render() -> None:
        out = console()

        def say(text: str) -> None:  # wrapped at the terminal's width (80 when piped)
            out.print(text, markup=False, highlight=False)

        where = f"dataset {dataset}" if dataset else "the whole ledger"
        if rec.seq:
            own = f" (its own: set for dataset {rec.dataset})" if rec.dataset else ""
            how = f"set at ledger entry {rec.seq} by {rec.set_by}, {rec.time}: {rec.reason}"
            if rec.proposal:
                how += f" (proposal {rec.proposal}, approved by {', '.join(rec.approvers)})"
            say(f"policy in force for {where}{own}:")
            say(f"  sha256 {rec.sha256}")
            say(how)
        else:
            say(f"policy in force for {where}: the packaged default {rec.loaded.path}")
            say(f"  sha256 {rec.sha256}")
            say("no `dpgov policy set` yet")
        for p in pending:
            say(
                f"open proposal {p['proposal']} by {p['proposed_by']}: {'; '.join(p['raises'])} "
                f"({len(p['approved_by'])} of {p['required']} approvals)"
            )
        typer.echo("")
        typer.echo(rec.loaded.text.rstrip("\n"))

    emit(as_json, data, render)


@policy_app.command("history")
def history(as_json: bool = JsonOption) -> None:
    """Every policy change on the ledger, oldest first: what took effect, proposals and their
    approvals, and entries that changed nothing (an unauthorised set)."""
    from dpgov.ledger import Ledger
    from dpgov.ledger.policies import policy_history

    ledger = Ledger.open()
    try:
        h = policy_history(ledger)
    finally:
        ledger.close()
    data = {
        "default": h.default.to_dict(),
        "changes": [r.to_dict() for r in h.changes],
        "proposals": [p.to_dict() for p in h.proposals.values()],
        "ignored": [{"seq": s, "why": why} for s, why in h.ignored],
    }

    def render() -> None:
        t = table(
            title="Policy changes (each in force from the entry shown)",
            caption="scope: a dataset, or the whole ledger; sha256: its first 12 digits",
        )
        t.add_column("entry", justify="right", no_wrap=True)
        t.add_column("scope", no_wrap=True)
        t.add_column("sha256", no_wrap=True)
        t.add_column("by", overflow="fold")
        t.add_column("reason", ratio=1)
        t.add_column("approved by", overflow="fold")
        t.add_row("—", "ledger", h.default.sha256[:12], "packaged", "default", "")
        for r in h.changes:
            t.add_row(
                str(r.seq),
                r.dataset or "ledger",
                r.sha256[:12],
                r.set_by,
                r.reason,
                ", ".join(r.approvers),
            )
        out = console()
        out.print(t)
        for p in h.proposals.values():
            out.print(
                f"proposal {p.seq} ({p.dataset or 'ledger'}, policy {p.loaded.sha256[:12]}) by "
                f"{p.proposer}: "
                f"{'; '.join(p.raises)}: {p.status}, approved by "
                f"{', '.join(p.approved_by) or 'nobody'} of {p.required} needed"
            )
        for s, why in h.ignored:
            out.print(f"entry {s} changed nothing: {why}")

    emit(as_json, data, render)
