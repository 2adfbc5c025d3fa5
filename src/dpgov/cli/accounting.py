"""``dpgov cost``, ``dpgov calibrate`` and ``dpgov budget``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dpgov.cli._output import (
    JsonOption,
    NoPolicyOption,
    PolicyOption,
    console,
    emit,
    eps_down,
    eps_up,
    table,
)
from dpgov.contracts import exhausted

ACCOUNTANT_HELP = "Accountant: pld (tight, default), prv, or rdp."


def register(app: typer.Typer) -> None:
    app.command("cost")(cost)
    app.command("calibrate")(calibrate)
    app.command("budget")(budget)


def _mechanism(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    from dpgov.accounting import AccountingInputError, DpSgdMechanism
    from dpgov.errors import UsageError

    try:
        return DpSgdMechanism(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps
        )
    except AccountingInputError as err:
        raise UsageError(str(err)) from err


def cost(
    noise_multiplier: float = typer.Option(..., "--noise-multiplier", help="σ of DP-SGD."),
    sample_rate: float = typer.Option(..., "--sample-rate", help="Poisson sampling rate q."),
    steps: int = typer.Option(..., "--steps", help="Number of optimizer steps T."),
    delta: float = typer.Option(1e-5, "--delta", help="δ at which ε is stated."),
    accountant: str = typer.Option("pld", "--accountant", help=ACCOUNTANT_HELP),
    as_json: bool = JsonOption,
) -> None:
    """ε of one DP-SGD run (Poisson-subsampled Gaussian, add/remove one patient)."""
    from dpgov.accounting import AccountantFailed, AccountingInputError, epsilon
    from dpgov.errors import Refused, UsageError

    mech = _mechanism(noise_multiplier, sample_rate, steps)
    try:
        eps = epsilon([mech], delta=delta, accountant=accountant)
    except AccountingInputError as err:
        raise UsageError(str(err)) from err
    except AccountantFailed as err:
        raise Refused(str(err)) from err
    data = {"epsilon": eps, "delta": delta, "accountant": accountant, "mechanism": mech.to_dict()}
    emit(
        as_json,
        data,
        lambda: typer.echo(
            f"ε = {eps_up(eps)} at δ = {delta:g} ({accountant}; σ={noise_multiplier:g}, "
            f"q={sample_rate:g}, T={steps})"
        ),
    )


def calibrate(
    target_epsilon: float = typer.Option(..., "--target-epsilon", help="ε the run may reach."),
    sample_rate: float = typer.Option(..., "--sample-rate", help="Poisson sampling rate q."),
    steps: int = typer.Option(..., "--steps", help="Number of optimizer steps T."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Calibrate against this dataset's blocks (with --block)."
    ),
    block: list[str] = typer.Option([], "--block", help="Block the run will use (repeat)."),
    policy: Path | None = PolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Smallest σ meeting the target ε, given what the named blocks have already spent."""
    from dpgov import names

    names.options(dataset=dataset, blocks=block)
    from dpgov.accounting import AccountingInputError, InfeasibleBudget, calibrate_noise_multiplier
    from dpgov.errors import Refused, UsageError
    from dpgov.gate.in_force import policy_in_force
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy

    if policy is not None:  # what-if
        budget_cfg = load_policy(policy).policy.budget
    else:  # the policy in force (for the dataset when one is named)
        budget_cfg = policy_in_force(Ledger.open(), dataset).policy.budget
    try:
        if dataset or block:
            if not (dataset and block):
                raise UsageError("--dataset and --block go together")
            sigma = Ledger.open().calibrate(
                dataset=dataset,
                blocks=block,
                target_epsilon=target_epsilon,
                sample_rate=sample_rate,
                steps=steps,
                budget=budget_cfg,
            )
        else:
            sigma = calibrate_noise_multiplier(
                target_epsilon=target_epsilon,
                delta=budget_cfg.delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=budget_cfg.accountant,
            )
    except AccountingInputError as err:
        raise UsageError(str(err)) from err
    except InfeasibleBudget as err:
        raise Refused(str(err)) from err
    data = {
        "noise_multiplier": sigma,
        "target_epsilon": target_epsilon,
        "delta": budget_cfg.delta,
        "accountant": budget_cfg.accountant,
        "composition": budget_cfg.composition,
        "sample_rate": sample_rate,
        "steps": steps,
        "dataset": dataset,
        "blocks": block,
    }
    emit(
        as_json,
        data,
        lambda: typer.echo(
            f"σ = {sigma:.4f} keeps ε ≤ {target_epsilon:g} at δ = {budget_cfg.delta:g}"
            + (f" on blocks {', '.join(block)} (given their spend)" if block else "")
        ),
    )


def budget(
    dataset: str | None = typer.Option(None, "--dataset", help="Only this dataset."),
    policy: Path | None = NoPolicyOption,
    patients: bool = typer.Option(
        False, "--per-patient", help="The distribution of per-patient ε (history classes)."
    ),
    as_json: bool = JsonOption,
    patients_old: bool = typer.Option(
        False, "--patients", hidden=True, help="Old spelling of --per-patient."
    ),
) -> None:
    """Per block: ε spent by its worst-off patient (the enforced figure, by the block's
    composition rule), beside both figures (adaptive: RDP filter; fixed: the accountant's tight
    composition), limit, remaining, charges; with --per-patient, the distribution of
    per-patient ε."""
    patients = patients or patients_old  # --patients: the old spelling (add-block's is a count)
    from dpgov.gate.in_force import budgets_in_force, policy_in_force
    from dpgov.ledger import Ledger

    ledger = Ledger.open()
    loaded = policy_in_force(ledger, dataset)  # the policy in force (each dataset's own below)
    statuses = budgets_in_force(ledger, dataset)  # from the verified entries
    disagree = ledger.disagreements(dataset)
    if disagree:
        more = f" (and {len(disagree) - 1} more)" if len(disagree) > 1 else ""
        typer.echo(
            f"dpgov: warning: the ledger's tables disagree with its entries: "
            f"{disagree[0].line()}{more}. The figures below are composed from the verified "
            f"entries, not the tables; see `dpgov ledger verify`",
            err=True,
        )
    if patients:
        from dpgov.cli.patients import budget_patients

        budget_patients(ledger, loaded, dataset=dataset, as_json=as_json)
        return
    grouped: dict[str, list[dict[str, Any]]] = {}
    for s in statuses:
        grouped.setdefault(s.dataset, []).append(s.to_dict())
    data = {
        "datasets": [{"dataset": d, "blocks": b} for d, b in grouped.items()],
        "policy": str(loaded.path),
        "policy_sha256": loaded.sha256,
        "source": "entries",  # every figure is derived from the hash-checked entries
        "tables_agree": not disagree,
        "tables_disagreement": disagree[0].to_dict() if disagree else None,
    }

    def render() -> None:
        if not statuses:
            typer.echo("no blocks registered yet (dpgov data prepare, or dpgov ledger add-block)")
            return
        b = loaded.policy.budget
        out = console()
        out.print(
            f"Privacy budget per block: ε of its worst-off patient at δ={b.delta:g}, the enforced "
            f"figure by the block's rule (adapt: RDP filter over {len(b.orders)} orders; fixed: "
            f"{b.accountant} of a committed schedule)"
        )
        for ds in grouped:
            out.print(_budget_table(ds, [s for s in statuses if s.dataset == ds]))
        out.print(BUDGET_CAPTION)

    emit(as_json, data, render)


BUDGET_CAPTION = (
    "pat.: patients; cls: history classes (— before members are attached); ε: spent, by the "
    "rule; adapt, fixed: ε by each rule; left: remaining; chg: charges; pend: pending"
)


def _budget_table(dataset: str, statuses: list[Any]) -> Any:
    """One dataset's blocks, at 80 columns: names and ε figures never cut (no_wrap), short
    headers explained by :data:`BUDGET_CAPTION`."""
    t = table(title=f"dataset {dataset}")
    t.add_column("block", no_wrap=True)
    for col in ("pat.", "cls"):
        t.add_column(col, justify="right")
    t.add_column("ε", justify="right", no_wrap=True)
    t.add_column("rule")
    for col in ("adapt", "fixed", "limit", "left"):
        t.add_column(col, justify="right", no_wrap=True)
    for col in ("chg", "pend"):
        t.add_column(col, justify="right")
    t.add_column("state", overflow="fold")
    for s in statuses:
        state = "retired" if s.retired else ("exhausted" if exhausted(s.remaining) else "open")
        t.add_row(
            s.block,
            str(s.patients),
            str(s.classes) if s.members else "—",
            eps_up(s.epsilon_spent),
            "adapt" if s.composition == "adaptive" else s.composition,
            eps_up(s.epsilon_spent_adaptive),
            eps_up(s.epsilon_spent_fixed),
            f"{s.epsilon_limit:g}",
            eps_down(s.remaining),
            str(s.charges),
            str(s.pending),
            state,
        )
    return t
