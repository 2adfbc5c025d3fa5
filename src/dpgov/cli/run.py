"""``dpgov run`` (one governed training run) and ``dpgov demo`` (the whole pipeline).

Heavy imports (torch, opacus, mlflow, fairlearn) happen inside the commands only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dpgov.cli._output import JsonOption, PolicyOption, console, emit, eps_up


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)


def run(
    params: Path | None = typer.Option(
        None,
        "--params",
        help="Params YAML (default ./params.yaml, else the embedded one).",
        show_default=False,
    ),
    policy: Path | None = PolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """One governed DP training run: plan, reserve, train, commit, evaluate, track."""
    from dpgov.training.governed import run_governed
    from dpgov.training.params import load_params

    loaded = load_params(params)
    summary = run_governed(loaded, policy, progress=not as_json)
    data = summary.to_dict()
    emit(as_json, data, lambda: _render(data))


def demo(as_json: bool = JsonOption) -> None:
    """Prepare, validate, train, evaluate and track on the bundled flchain data."""
    from dpgov import config
    from dpgov.errors import UsageError
    from dpgov.training.governed import run_governed
    from dpgov.training.params import embedded_params_path, load_params

    try:
        import sksurv  # noqa: F401
    except ImportError as err:
        raise UsageError(
            "dpgov demo needs the bundled flchain data from scikit-survival: "
            "pip install 'dpgov[demo]'"
        ) from err
    embedded = load_params(embedded_params_path())
    policy = Path(__file__).resolve().parents[1] / "defaults" / "policy.yaml"
    out, steps = _prepare_and_validate(config.home() / "demo", policy, quiet=as_json)
    params = embedded.model_copy(
        update={"train": embedded.train.model_copy(update={"data": str(out)})}
    )
    summary = run_governed(params, policy, progress=not as_json)
    data = {"data": steps, **summary.to_dict()}
    emit(as_json, data, lambda: _render(data))


def _prepare_and_validate(home: Path, policy: Path, *, quiet: bool) -> tuple[Path, dict]:
    """The data module's prepare and validate steps; a failed validation stops the run."""
    from dpgov.data import prepare, validate
    from dpgov.errors import Refused

    out = home / "prepared" / "flchain"
    result = prepare(None, None, out=out)
    if not quiet:
        typer.echo(
            f"prepared {result.dataset}: {result.n_train} train / {result.n_test} test "
            f"patients in {len(result.blocks)} blocks, data version {result.data_version}",
            err=True,
        )
    report = validate(None, None, prepared=out, policy=policy, out=home / "validation" / "flchain")
    if not report.ok:
        failed = ", ".join(c.name for c in report.failed[:3])
        raise Refused(f"validation of {out} failed ({failed}): nothing was reserved")
    if not quiet:
        typer.echo(
            f"validated {out}: {len(report.checks)} checks of the data contract hold", err=True
        )
    info = {
        "prepare": result.to_dict(),
        "validate": {
            "ok": report.ok,
            "checks": len(report.checks),
            "data_version": report.data_version,
        },
    }
    return out, info


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]"


def _render(data: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    plan = data["plan"]
    out.print(
        f"[bold]run[/bold] {data['run_id']}  model {data['model_name']} "
        f"version {data['model_version']} (candidate)"
    )
    out.print(
        f"privacy: ε = {eps_up(data['epsilon'])} at δ = {plan['delta']:g} ({plan['accountant']}) "
        f"on {plan['dataset']} blocks {', '.join(plan['blocks'])}; σ = "
        f"{plan['noise_multiplier']:.4g}, q = {plan['sample_rate']:.4g}, "
        f"T = {data['steps']}, C = {plan['max_grad_norm']:g}"
    )
    out.print(
        "cumulative ε per block: "
        + ", ".join(f"{b} {eps_up(v)}" for b, v in data["block_epsilon"].items())
    )
    ref = data.get("reference_auroc")
    price = f"; non-private reference {ref:.3f}, price {ref - data['auroc']:+.3f}" if ref else ""
    out.print(f"utility: AUROC {data['auroc']:.3f}{price}")
    table = Table(title="Subgroups (test split)")
    for col in ("attribute", "group", "n", "positives", "AUROC [95% CI]", "FNR [95% CI]"):
        table.add_column(col)
    for s in data["subgroups"]:
        table.add_row(
            s["attribute"],
            s["group"],
            str(s["n"]),
            str(s["positives"]),
            _fmt(s["auroc"]) + _ci(s["auroc_lo"], s["auroc_hi"]),
            _fmt(s["fnr"]) + _ci(s["fnr_lo"], s["fnr_hi"]),
        )
    out.print(table)
    ref_gaps = {(g["attribute"], g["metric"]): g["gap"] for g in data.get("reference_gaps") or []}
    for g in data["gaps"]:
        ref_gap = ref_gaps.get((g["attribute"], g["metric"]))
        extra = f" (reference {ref_gap:.3f})" if ref_gap is not None else ""
        out.print(
            f"gap {g['attribute']} {g['metric']}: {g['gap']:.3f}{_ci(g['lo'], g['hi'])}"
            f" over {g['groups_judged']} groups of ≥ {g['min_group_n']}{extra}"
        )
    out.print(f"done in {data['seconds']:.1f} s")
