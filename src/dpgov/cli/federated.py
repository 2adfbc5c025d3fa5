"""``dpgov federated run``: Flower rounds over several sites, each reserving on its own ledger.

The federation comes from a YAML file (``--federation``) or from ``--site`` flags; flags for
the privacy mode and the rounds override the file. Everything that can be wrong with it, or
with any site (no contract, data failing validation, a key mismatch, too few sites), is one
line, exit 2, before any site is charged; exit 1 when the budgets refuse the first round.
The run is a Prefect flow (``pipelines.federated``), like ``dpgov run``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import typer

from dpgov.cli._output import JsonOption, emit, eps_up, prose, table

federated_app = typer.Typer(
    help="Federated DP across sites (hospitals): Flower rounds, a ledger per site.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(federated_app, name="federated")


@federated_app.command("run")
def run(
    federation: Path | None = typer.Option(
        None, "--federation", "-f", help="Federation YAML (docs/federated.md).", show_default=False
    ),
    site: list[str] | None = typer.Option(
        None,
        "--site",
        help="A site as NAME=FOLDER[,ledger=URL][,domain=D] (repeat; instead of --federation).",
        show_default=False,
    ),
    mode: str | None = typer.Option(
        None, "--mode", help="record (DP-SGD at each site) or site (DP-FedAvg).", show_default=False
    ),
    rounds: int | None = typer.Option(None, "--rounds", min=1, show_default=False),
    local_steps: int | None = typer.Option(None, "--local-steps", min=1, show_default=False),
    noise_multiplier: float | None = typer.Option(
        None, "--noise-multiplier", help="σ (record: per site; site: server).", show_default=False
    ),
    clip: float | None = typer.Option(None, "--clip", help="C (per sample or per site update)."),
    site_sample_rate: float | None = typer.Option(
        None, "--site-sample-rate", help="Mode site: Poisson sampling of sites per round."
    ),
    no_amplification: bool = typer.Option(
        False,
        "--no-amplification",
        help="With --site-sample-rate: charge only the sampled sites, at the unamplified cost.",
    ),
    min_sites: int | None = typer.Option(None, "--min-sites", min=1, show_default=False),
    as_json: bool = JsonOption,
) -> None:
    """Run a federation: each round each site reserves on its own ledger (a refusing site sits
    out), trains, and is charged; ends with the gate per site."""
    from dpgov.errors import UsageError
    from dpgov.federated.spec import load_spec, spec_from_flags
    from pipelines.runtime import HEAVY_MODULES, orchestrate

    overrides: dict[str, Any] = {
        "mode": mode,
        "rounds": rounds,
        "local_steps": local_steps,
        "noise_multiplier": noise_multiplier,
        "clip": clip,
        "site_sample_rate": site_sample_rate,
        "amplification": False if no_amplification else None,
        "min_sites": min_sites,
    }
    if (federation is None) == (not site):
        raise UsageError("give the federation as --federation FILE or as --site flags (one)")
    spec = (
        load_spec(federation, **overrides)
        if federation is not None
        else spec_from_flags(list(site or []), **overrides)
    )  # bad input: one line, before anything starts
    path = write_spec(spec)

    def call() -> dict[str, Any]:
        from pipelines.federated import federated_run

        result: dict[str, Any] = federated_run(federation=str(path), progress=not as_json)
        return result

    summary, timings = orchestrate(
        call, preload_modules=HEAVY_MODULES, say=None if as_json else _err
    )
    data = {**summary, "orchestration": timings}
    emit(as_json, data, lambda: render(data))


def write_spec(spec: Any) -> Path:
    """The federation as a YAML file under ``<home>/federated/`` (the flow's parameter is its
    path: ledger URLs may carry passwords and stay out of the Prefect database)."""
    import os

    import yaml

    from dpgov import config

    folder = config.home() / "federated"
    folder.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(spec)
    data["sites"] = [{k: v for k, v in s.items() if v is not None} for s in data["sites"]]
    path = folder / f"federation-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path


def _err(line: str) -> None:
    typer.echo(line, err=True)


def render(data: dict[str, Any]) -> None:
    """The sites, their ε and the gate per site (80 columns)."""
    prose(
        f"federated {data['mode']}-level run: {data['rounds']} of {data['rounds_planned']} "
        f"round(s) over {len(data['sites'])} site(s), model {data['model_name']} version "
        f"{data.get('model_version') or '-'}"
    )
    if data.get("stopped"):
        prose(f"stopped early: {data['stopped']}")
    t = table("Sites: ε per patient (largest block), spent rounded up")
    for col in ("site", "patients", "ε spent", "limit", "rounds", "AUROC"):
        t.add_column(col, justify="left" if col == "site" else "right")
    for s in data["sites"]:
        auroc = "-" if s.get("auroc") is None else f"{s['auroc']:.3f}"
        t.add_row(
            s["site"],
            str(s["patients"]),
            eps_up(s["epsilon_spent"]),
            f"{s['epsilon_limit']:g}",
            str(s["rounds_charged"]),
            auroc,
        )
    from dpgov.cli._output import console

    console().print(t)
    render_gate(data["gate"])


def render_gate(gate: dict[str, Any]) -> None:
    from dpgov.cli._output import console

    t = table(f"Gate per site: {'ALLOWED' if gate.get('allowed') else 'BLOCKED'}")
    t.add_column("site")
    t.add_column("gate")
    t.add_column("failing checks", overflow="fold")
    for d in gate.get("sites", []):
        from rich.markup import escape

        t.add_row(
            d["site"], "allowed" if d["allowed"] else "blocked", escape(", ".join(d["failing"]))
        )
    console().print(t)
    for g in gate.get("site_gaps", []):
        if g.get("gap") is not None:
            smallest = " (the smallest site)" if g.get("worst_is_smallest") else ""
            prose(
                f"site as a fairness attribute: {g['metric']} gap {g['gap']:.3f}, worst "
                f"{g['worst']}{smallest}"
            )


@federated_app.command("approve")
def approve(
    model: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Model version."),
    federation: Path = typer.Option(..., "--federation", "-f", help="The federation YAML."),
    note: str = typer.Option("", "--note", help="Why you approve (recorded)."),
    as_json: bool = JsonOption,
) -> None:
    """Approve a federated model on every site's ledger (each site's approval rules apply;
    one refusing site records nothing anywhere), then show the gate per site."""
    from dpgov.federated.release import approve as approve_version
    from dpgov.federated.spec import load_spec

    gate = approve_version(load_spec(federation), model, version, note=note)
    emit(as_json, gate, lambda: render_gate(gate))


@federated_app.command("gate")
def gate(
    model: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Model version."),
    federation: Path = typer.Option(..., "--federation", "-f", help="The federation YAML."),
    promote: bool = typer.Option(
        False, "--promote", help="Move the release alias when every site's gate allows."
    ),
    as_json: bool = JsonOption,
) -> None:
    """The gate per site now (recorded on each site's ledger); --promote releases the model
    when every site allows it (exit 1 when one blocks)."""
    from dpgov.federated.release import regate
    from dpgov.federated.spec import load_spec

    result = regate(load_spec(federation), model, version, promote=promote)
    emit(as_json, result, lambda: render_gate(result))
    if not result.get("allowed"):
        raise typer.Exit(1)
