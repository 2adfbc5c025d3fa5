"""``dpgov gate``, ``dpgov approve``, ``dpgov refuse`` and ``dpgov promote``.

Exit codes: 0 allowed / recorded / promoted; 1 blocked (every failing check is listed);
2 bad input (malformed policy, unknown model or version, approver not allowed: nothing recorded).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dpgov import names
from dpgov.cli._output import JsonOption, PolicyOption, console, emit, eps_up

if TYPE_CHECKING:
    from dpgov.gate.decision import Check, Decision
    from dpgov.ledger import Ledger
    from dpgov.policy import LoadedPolicy
    from dpgov.tracking.registry import Registry

ModelArg = typer.Argument(..., help="Registered model name.", show_default=False)
VersionArg = typer.Argument(..., help="Model version number.", show_default=False)


def register(app: typer.Typer) -> None:
    app.command("gate")(gate)
    app.command("approve")(approve)
    app.command("refuse")(refuse)
    app.command("promote")(promote)


@contextmanager
def _services(policy_file: Path | None) -> Iterator[tuple[LoadedPolicy, Ledger, Registry]]:
    """Policy first (a malformed policy stops everything), then ledger and registry."""
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.tracking.registry import Registry

    loaded = load_policy(policy_file)
    ledger = Ledger.open()
    try:
        yield loaded, ledger, Registry()
    finally:
        ledger.close()


def _fmt(check: Check, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if check.name == "release_epsilon" or check.name.startswith("block_budget"):
            return eps_up(value)
        return f"{value:.4g}"
    return str(value)


def render_decision(decision: Decision, policy_path: Path | str) -> None:
    from rich.table import Table

    verdict = "[bold green]ALLOWED[/]" if decision.allowed else "[bold red]BLOCKED[/]"
    sha = (decision.policy_sha256 or "")[:12]
    table = Table(
        title=f"gate: {decision.model} version {decision.version} — {verdict}",
        caption=f"policy {policy_path} (sha256 {sha}…)",
    )
    table.add_column("check", no_wrap=True)
    table.add_column("observed", justify="right")
    table.add_column("limit", justify="right")
    table.add_column("result")
    table.add_column("reason")
    for c in decision.checks:
        table.add_row(
            c.name,
            _fmt(c, c.observed),
            _fmt(c, c.limit),
            "[green]pass[/]" if c.passed else "[bold red]FAIL[/]",
            c.reason,
        )
    console().print(table)


def gate(
    model: str = ModelArg,
    version: str = VersionArg,
    policy: Path | None = PolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Evaluate the policy for a model version now, print every check, and record the decision
    (ledger entry and model-version tags). Exit 0 allowed, 1 blocked."""
    from dpgov.errors import Refused
    from dpgov.gate.candidate import parse_version
    from dpgov.gate.service import run_gate

    names.options(model=model)
    version = parse_version(version)
    with _services(policy) as (loaded, ledger, registry):
        result = run_gate(model, version, loaded, ledger, registry)
    decision = result.decision
    data = {
        **decision.to_dict(),
        "ledger_seq": result.entry.seq if result.entry else None,
        "policy_path": str(loaded.path),
    }
    emit(as_json, data, lambda: render_decision(decision, loaded.path))
    if not decision.allowed:
        raise Refused(decision.summary())


def _approval_cmd(
    kind: str, model: str, version: str, by: str, text: str, policy: Path | None, as_json: bool
) -> None:
    from dpgov.gate.approvals import record_approval, record_refusal
    from dpgov.gate.candidate import parse_version
    from dpgov.gate.standing import summarize

    names.options(model=model, by=by)
    version = parse_version(version)
    with _services(policy) as (loaded, ledger, registry):
        if kind == "approval":
            entry, records = record_approval(
                model=model,
                version=version,
                by=by,
                note=text,
                policy=loaded,
                ledger=ledger,
                registry=registry,
            )
        else:
            entry, records = record_refusal(
                model=model,
                version=version,
                by=by,
                reason=text,
                policy=loaded,
                ledger=ledger,
                registry=registry,
            )
    state = summarize(records, loaded.policy.approvals, entry.payload["author"])
    data = {
        "recorded": kind,
        "model": model,
        "version": version,
        "by": entry.payload["by"],
        "ledger_seq": entry.seq,
        "time": entry.time,
        **state,
    }

    def render() -> None:
        names = ", ".join(a["by"] for a in state["approvals"]) or "none"
        refusals = ", ".join(f"{r['by']} ({r['text']})" for r in state["refusals"]) or "none"
        typer.echo(
            f"{kind} by {entry.payload['by']} of {model} version {version} recorded "
            f"(ledger entry {entry.seq})"
        )
        typer.echo(
            f"approvals: {len(state['approvals'])} of {state['required']} required "
            f"({names}); standing refusals: {refusals}"
        )

    emit(as_json, data, render)


def approve(
    model: str = ModelArg,
    version: str = VersionArg,
    by: str = typer.Option(..., "--by", help="Who approves (checked against the policy)."),
    note: str = typer.Option("", "--note", help="Why: recorded with the approval."),
    policy: Path | None = PolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Record an approval of a model version (ledger and model-version tags)."""
    _approval_cmd("approval", model, version, by, note, policy, as_json)


def refuse(
    model: str = ModelArg,
    version: str = VersionArg,
    by: str = typer.Option(..., "--by", help="Who refuses (checked against the policy)."),
    reason: str = typer.Option(..., "--reason", help="Why: recorded with the refusal."),
    policy: Path | None = PolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Record a refusal: it blocks promotion until the same approver approves the version."""
    _approval_cmd("refusal", model, version, by, reason, policy, as_json)


def promote(
    model: str = ModelArg,
    version: str = VersionArg,
    alias: str | None = typer.Option(
        None, "--alias", help="Registry alias to move (default: the policy's release.alias)."
    ),
    policy: Path | None = PolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Re-check the gate now and, if every check passes, point the alias at this version.
    Rollback to an older version goes through the same gate. Exit 1 when blocked."""
    from dpgov.gate import promotion as promo
    from dpgov.gate.candidate import parse_version

    names.options(model=model, alias=alias)
    version = parse_version(version)
    with _services(policy) as (loaded, ledger, registry):
        try:
            result = promo.promote(
                model=model,
                version=version,
                alias=alias,
                policy=loaded,
                ledger=ledger,
                registry=registry,
            )
        except promo.PromotionBlocked as blocked:
            decision, path = blocked.decision, loaded.path
            data = {"promoted": False, "alias": blocked.alias, "decision": decision.to_dict()}
            emit(as_json, data, lambda: render_decision(decision, path))
            raise

    def render() -> None:
        if not result.promoted:
            typer.echo(
                f"{model} version {version} already holds @{result.alias}; gate passes, "
                f"nothing moved"
            )
            return
        before = f"replaced version {result.replaced}" if result.replaced else "first release"
        kind = "rolled back" if result.rollback else "promoted"
        seq = result.entry.seq if result.entry else "?"
        typer.echo(
            f"{kind} {model} version {version} to @{result.alias} ({before}; ledger entry {seq})"
        )

    emit(as_json, result.to_dict(), render)
