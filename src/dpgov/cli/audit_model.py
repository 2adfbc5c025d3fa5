"""``dpgov audit-model MODEL VERSION``: an empirical lower bound on ε beside the claimed ε.

Exit codes: 0 the lower bound does not exceed the claimed ε; 1 it does (a privacy bug is
proven), or the ledger refuses the audit's charge; 2 bad input (unknown model or version,
the reference, data that is not the candidate's, a bad option): one line, nothing charged.
"""

from __future__ import annotations

from pathlib import Path

import typer

from dpgov import names
from dpgov.cli._output import JsonOption, console, emit, table

CanariesOption = typer.Option(1000, "--canaries", help="Canaries, each in with probability ½.")
ThreatOption = typer.Option(
    "white-box",
    "--threat-model",
    help="white-box: gradient canaries on every step, the auditor sees each noisy step; "
    "black-box: input canaries, the auditor sees the final model.",
)
DataOption = typer.Option(
    None,
    "--data",
    help="The candidate's prepared data folder. Default: data/prepared/<its dataset>.",
    show_default=False,
)


def register(app: typer.Typer) -> None:
    app.command("audit-model")(audit_model)


def audit_model(
    model: str = typer.Argument(..., help="Registered model name.", show_default=False),
    version: str = typer.Argument(..., help="Model version number.", show_default=False),
    canaries: int = CanariesOption,
    threat_model: str = ThreatOption,
    data: Path | None = DataOption,
    as_json: bool = JsonOption,
) -> None:
    """Audit a candidate in one run with canaries (Steinke, Nasr and Jagielski 2023): the
    lower bound on ε at 95 % confidence, the claimed ε and the ceiling (the bound if every
    guess were right). The audit is charged to the candidate's blocks like a run and recorded
    in the ledger and on the candidate's MLflow run. Exit 1 when the bound exceeds the claim."""
    from dpgov.errors import UsageError
    from dpgov.gate.candidate import parse_version
    from dpgov.ledger import Ledger
    from dpgov.tracking.registry import Registry
    from dpgov.training.audit_model import audit_candidate
    from dpgov.training.canary_audit import THREAT_DESCRIPTIONS, THREAT_MODELS, check_canaries

    names.options(model=model)
    version = parse_version(version)
    if threat_model not in THREAT_MODELS:
        raise UsageError(
            f"--threat-model: unknown {threat_model!r}; use {' or '.join(THREAT_MODELS)}"
        )
    check_canaries(canaries)
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
    r = outcome.result

    def show() -> None:
        verdict = "[bold green]PASSED[/]" if r.passed else "[bold red]VIOLATION[/]"
        t = table(
            title=f"audit-model: {model} version {outcome.version} — {verdict}",
            caption=f"{THREAT_DESCRIPTIONS[r.threat_model]}; ledger entry {outcome.record_seq}",
        )
        t.add_column("figure", no_wrap=True)
        t.add_column("value", justify="right", no_wrap=True)
        t.add_column("meaning", ratio=1)
        t.add_row("ε lower bound", f"{r.epsilon_lower_bound:.3f}", f"at {r.confidence:.0%} conf.")
        t.add_row("ε claimed", f"{r.epsilon_claimed:.3f}", f"the model's own, at δ {r.delta:g}")
        t.add_row("ceiling", f"{r.ceiling:.3f}", "the bound if every guess were right")
        t.add_row("canaries", str(r.canaries), "each in with probability ½")
        t.add_row("guesses", f"{r.correct}/{r.guesses}", "right of made")
        t.add_row("steps", str(r.steps), f"{r.seconds:.1f} s")
        console().print(t)

    emit(as_json, {**outcome.to_dict()}, show)
    if not r.passed:
        raise typer.Exit(1)
