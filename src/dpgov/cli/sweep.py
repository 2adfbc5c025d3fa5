"""``dpgov sweep``: a privacy–utility–fairness tradeoff study, every trial charged.

Heavy imports (torch, opacus, mlflow, fairlearn, matplotlib) happen inside the command only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dpgov.cli._output import (
    JsonOption,
    PolicyOption,
    console,
    emit,
    eps_down,
    eps_up,
    table,
)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)


def sweep(
    epsilons: str = typer.Option(
        ...,
        "--epsilons",
        help="Comma-separated ε per trial, e.g. 1,3,8 (each trial's own ε at the policy's δ).",
        show_default=False,
    ),
    seeds: str = typer.Option(
        "1", "--seeds", metavar="N", help="Trials per ε, seeds train.seed, train.seed+1, ..."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show every trial and the composed cost per block; charge nothing."
    ),
    params: Path | None = typer.Option(
        None,
        "--params",
        help="Params YAML (default ./params.yaml, else the embedded one).",
        show_default=False,
    ),
    policy: Path | None = PolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Train DP models at each ε and the non-private reference; table and plot the tradeoff.

    The composed cost per block is checked before any trial runs; every trial is charged.
    """
    # Each trial is reserved, trained, committed and tracked as a child of one MLflow parent
    # run; no model versions are registered (sweep trials are studies, not release candidates).
    from dpgov.errors import Refused
    from dpgov.training.sweep import parse_epsilons, parse_seeds

    eps_list = parse_epsilons(epsilons)  # bad input: exit 2 before anything is opened
    n_seeds = parse_seeds(seeds)
    _quiet_logs()

    from dpgov.errors import UsageError
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.training.governed import enforced_policy, validate_for
    from dpgov.training.inputs import load_data
    from dpgov.training.params import load_params, prepared_path
    from dpgov.training.sweep import plan_sweep, run_sweep

    if policy is not None and not dry_run:
        raise UsageError(
            "--policy is a what-if for --dry-run only: a sweep that charges enforces the policy "
            "in force on the ledger; change it with `dpgov policy set FILE --reason TEXT`"
        )
    loaded = load_params(params)
    ledger = Ledger.open()
    pol = load_policy(policy) if policy is not None else enforced_policy(ledger, loaded)
    validate_for(loaded, pol)  # dpgov trains only on validated data: refused before any plan
    data, version = load_data(prepared_path(loaded))
    sp = plan_sweep(
        loaded, pol, data, ledger=ledger, epsilons=eps_list, seeds=n_seeds, data_version=version
    )
    if dry_run:
        plan = {"dry_run": True, "charged": False, **sp.to_dict()}
        emit(as_json, plan, lambda: _render_plan(plan))
        if not sp.fits:
            raise Refused(sp.refusal())
        return
    if not sp.fits:
        raise Refused(sp.refusal())

    def say(msg: str) -> None:
        if not as_json:
            typer.echo(msg, err=True)

    say(
        f"sweep: {len(sp.trials)} trials on {sp.dataset} blocks {', '.join(sp.blocks)}; "
        f"composed cost ε={eps_up(sp.costs[0].sweep)} per block, checked against the budget"
    )
    result = run_sweep(sp, ledger=ledger, progress=say)
    data_out = result.to_dict()
    emit(as_json, data_out, lambda: _render_result(data_out))
    if result.stopped:
        raise Refused(result.stopped)


def _quiet_logs() -> None:
    """dp_accounting's RDP bracket warns through absl on every calibration: keep it quiet."""
    import logging

    for name in ("absl", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------- rendering


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _iv(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("mean") is None:
        return "-"
    text = _f(iv["mean"])
    if iv.get("lo") is not None and iv.get("hi") is not None:
        text += f" [{iv['lo']:.2f},{iv['hi']:.2f}]"  # wraps after the mean at 80 columns
    return text


def _render_plan(plan: dict[str, Any]) -> None:
    out = console()
    out.print(
        f"[bold]sweep plan[/bold] (dry run: nothing charged) on {plan['dataset']}, "
        f"{plan['n_train_patients']} training patients in blocks {', '.join(plan['blocks'])}; "
        f"q = {plan['sample_rate']:.4g}, T = {plan['steps']} steps per trial, "
        f"δ = {plan['delta']:g} ({plan['accountant']})"
    )
    trials = table(title="Trials (σ calibrated for each ε on its own)")
    for col in ("trial", "ε target", "seed", "σ", "ε of the trial"):
        trials.add_column(col, justify="right", no_wrap=True)
    for t in plan["trials"]:
        trials.add_row(
            str(t["trial"]),
            f"{t['epsilon']:g}",
            str(t["seed"]),
            f"{t['noise_multiplier']:.4g}",
            eps_up(t["epsilon_run"]),
        )
    out.print(trials)
    blocks = table(
        title="Privacy cost per block (every trial composed with what it spent)",
        caption="chg: charges; spent: ε before the sweep; sweep: ε of the sweep alone; "
        "after: both composed; left: remaining after",
    )
    blocks.add_column("block", no_wrap=True)
    blocks.add_column("chg", justify="right")
    for col in ("spent", "sweep", "after", "limit", "left"):
        blocks.add_column(col, justify="right", no_wrap=True)
    blocks.add_column("", no_wrap=True)
    for c in plan["blocks_cost"]:
        blocks.add_row(
            c["block"],
            str(c["charges"]),
            eps_up(c["epsilon_spent"]),
            eps_up(c["epsilon_sweep"]),
            eps_up(c["epsilon_after"]),
            f"{c['epsilon_limit']:g}",
            eps_down(c["remaining_after"]),
            "ok" if c["fits"] else "[red]OVER[/red]",
        )
    out.print(blocks)
    out.print(
        f"the sweep alone composes to ε = {eps_up(plan['epsilon_sweep'])} per block "
        f"(the trials' ε summed would be {eps_up(plan['epsilon_sum_of_trials'])})"
    )


def _render_result(data: dict[str, Any]) -> None:
    from rich.markup import escape

    out = console()
    out.print(
        f"[bold]sweep[/bold] {data['sweep_id']}: parent run {data['parent_run_id']} "
        f"(experiment {data['experiment']}), {len(data['trials_run'])} of "
        f"{data['trials_planned']} trials run; no model versions registered (a study)"
    )
    if data["summary"]:
        out.print(tradeoff_table(data["summary"]))
        out.print(
            escape(
                "cells: mean over seeds [the seeds' bootstrap 95% intervals averaged]; "
                "sd: standard deviation over seeds; gaps: largest minus smallest judged subgroup"
            )
        )
    if data["block_epsilon"]:
        out.print(
            "cumulative ε per block now: "
            + ", ".join(f"{b} {eps_up(v)}" for b, v in data["block_epsilon"].items())
        )
    charged = ", ".join(
        f"trial {c['trial']} ε={eps_up(c['epsilon'])} ({c['reservation']})" for c in data["charged"]
    )
    out.print(f"charged: {charged or 'nothing'}")
    if data["files"]:
        names = ", ".join(Path(p).name for p in data["files"].values())
        out.print(f"saved in {data['folder']}: {names}")
    if data["stopped"]:
        not_run = ", ".join(str(i) for i in data["trials_not_run"])
        out.print(f"[red]stopped[/red]: trials not run: {not_run}")
    out.print(f"done in {data['seconds']:.1f} s")


def tradeoff_table(summary: list[dict[str, Any]]) -> Any:
    """The summary as a rich table: one column per variant (each ε, then the reference)."""
    from rich.markup import escape

    t = table(title="Privacy–utility–fairness tradeoff (test split)")
    t.add_column("metric", overflow="fold")
    for row in summary:  # a cell wraps after its mean ("0.812" over "[0.77,0.84]")
        t.add_column(escape(row["variant"]), justify="right", overflow="fold", max_width=11)

    def add(name: str, cells: list[str]) -> None:
        t.add_row(escape(name), *[escape(c) for c in cells])

    add(
        "ε spent per trial",
        [eps_up(r["epsilon_spent"]) if r["epsilon_spent"] is not None else "∞" for r in summary],
    )
    add("σ", [_f(r["noise_multiplier"], 4) if r["noise_multiplier"] else "-" for r in summary])
    add("seeds", [str(r["seeds"]) for r in summary])
    add("AUROC", [_iv(r["auroc"]) for r in summary])
    add("AUROC sd", [_f(r["auroc"]["sd"]) for r in summary])
    add("calibration error (ECE)", [_iv(r["calibration_error"]) for r in summary])
    for s in summary[0]["subgroups"]:
        key = (s["attribute"], s["group"])
        cells = []
        for r in summary:
            hit = next((x for x in r["subgroups"] if (x["attribute"], x["group"]) == key), None)
            cells.append(_iv(hit["auroc"]) if hit else "-")
        add(f"AUROC {s['attribute']}={s['group']} (n={s['n']})", cells)
    for g in summary[0]["gaps"]:
        key = (g["attribute"], g["metric"])
        cells = []
        for r in summary:
            hit = next((x for x in r["gaps"] if (x["attribute"], x["metric"]) == key), None)
            cells.append(_iv(hit["gap"]) if hit else "-")
        add(f"gap {g['attribute']} {g['metric'].upper()}", cells)
    return t
