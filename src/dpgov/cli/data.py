"""``dpgov data prepare | validate``: DVC stages of the governed pipeline.

Without arguments both work on the bundled flchain cohort (or on what ``params.yaml``'s ``data:``
section names). Unusable input exits 2 with one line; data failing its contract exits 1. Nothing
is reserved or charged by either command; prepare registers the dataset's blocks in the ledger
and records its output in DVC (outside ``dvc repro``, which records it itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dpgov.cli._output import JsonOption, NoPolicyOption, emit

data_app = typer.Typer(help="Prepare and validate datasets (DVC stages).", no_args_is_help=True)

DataOption = typer.Option(
    None,
    "--data",
    help="CSV, Parquet or MedMNIST .npz file (default: bundled flchain).",
    show_default=False,
)
ContractOption = typer.Option(
    None,
    "--contract",
    help="Data contract YAML (default: contracts/flchain.yaml).",
    show_default=False,
)
DatasetOption = typer.Option(
    None,
    "--dataset",
    help="Name of the prepared dataset (default: the contract's).",
    show_default=False,
)
MetadataOption = typer.Option(
    None,
    "--metadata",
    help="Image metadata CSV (split, index, sex, age, ...).",
    show_default=False,
)
ParamsOption = typer.Option(
    None,
    "--params",
    help="params.yaml whose data: section applies (default ./params.yaml).",
    show_default=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _settings(
    params_file: Path | None,
    data: str | None,
    contract: Path | None,
    dataset: str | None,
    metadata: Path | None,
) -> tuple[Any, dict[str, Any]]:
    """Command-line values over params.yaml's data: section over built-in defaults."""
    from dpgov import names
    from dpgov.data.params import load_params

    names.options(dataset=dataset)
    params = load_params(params_file)
    explicit_data = data is not None
    chosen: dict[str, Any] = {
        "source": data if explicit_data else params.source,
        "contract": contract
        if contract is not None
        else (None if explicit_data else params.contract),
        "dataset": dataset if dataset is not None else (None if explicit_data else params.dataset),
        "metadata": metadata
        if metadata is not None
        else (None if explicit_data else params.metadata),
    }
    if explicit_data and contract is None and data not in ("bundled:flchain", "flchain"):
        from dpgov.errors import UsageError

        raise UsageError("--data needs --contract (the data contract YAML of that file)")
    if chosen["source"] in ("bundled:flchain", "flchain"):
        chosen["source"] = None
    return params, chosen


@data_app.command("prepare")
def prepare_cmd(
    data: str | None = DataOption,
    contract: Path | None = ContractOption,
    dataset: str | None = DatasetOption,
    metadata: Path | None = MetadataOption,
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default data/prepared/<dataset>).", show_default=False
    ),
    params_file: Path | None = ParamsOption,
    no_register: bool = typer.Option(
        False, "--no-register", help="Do not register the blocks in the ledger."
    ),
    no_dvc: bool = typer.Option(
        False, "--no-dvc", help="Do not record the output in DVC (dvc add / dvc commit)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Build train/test Parquet and meta.json; register the blocks in the ledger; record the
    output in the DVC repository here (`dvc add`, or `dvc commit` of its dvc.yaml stage) and
    push it to the default remote, so `dpgov audit` finds its data version."""
    from dpgov.data.dvc_output import version_prepared
    from dpgov.data.preparation import prepare
    from dpgov.data.versioning import configure_remote, find_dvc_root

    params, s = _settings(params_file, data, contract, dataset, metadata)
    result = prepare(
        s["source"],
        s["contract"],
        dataset=s["dataset"],
        out=out,
        metadata=s["metadata"],
        params=params,
        register=not no_register,
    )
    root = find_dvc_root(Path.cwd())
    remote = configure_remote(root) if root is not None else None
    versioned = None if no_dvc else version_prepared(result.path)
    payload = result.to_dict() | {
        "dvc_remote_set": remote,
        "dvc": versioned.to_dict() if versioned is not None else None,
    }

    def render() -> None:
        blocks = ", ".join(f"{b} ({n})" for b, n in result.blocks.items())
        typer.echo(f"prepared {result.dataset} ({result.kind}) at {result.path}")
        typer.echo(f"  data version {result.data_version}")
        typer.echo(
            f"  train {result.n_train} records, test {result.n_test}; "
            f"{len(result.features)} features"
        )
        typer.echo(f"  blocks (training patients): {blocks}")
        if result.registered:
            typer.echo(f"  registered in the ledger: {', '.join(result.registered)}")
        if remote:
            typer.echo(f"  DVC remote 'local' set to {remote} (.dvc/config.local)")
        if versioned is None:
            typer.echo("  not recorded in DVC (--no-dvc)")
        elif versioned.how is None:
            typer.echo(f"  not recorded in DVC: {versioned.note}")
        else:
            pushed = f", pushed to {versioned.remote}" if versioned.remote else ""
            typer.echo(f"  recorded in DVC ({versioned.how}{pushed})")
            if versioned.note:
                typer.echo(f"  {versioned.note}")
            if versioned.to_git:
                typer.echo(f"  to keep it with the code: git add {' '.join(versioned.to_git)}")

    emit(as_json, payload, render)


@data_app.command("validate")
def validate_cmd(
    data: str | None = DataOption,
    contract: Path | None = ContractOption,
    dataset: str | None = DatasetOption,
    metadata: Path | None = MetadataOption,
    prepared: Path | None = typer.Option(
        None,
        "--prepared",
        help="Prepared folder (default data/prepared/<dataset>).",
        show_default=False,
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Results folder (default data/validation/<dataset>).",
        show_default=False,
    ),
    policy: Path | None = NoPolicyOption,
    params_file: Path | None = ParamsOption,
    as_json: bool = JsonOption,
) -> None:
    """Check the data against its contract (Great Expectations) and the δ of the policy in
    force for the dataset.

    Exit 1 when a check fails; results in data/validation/<dataset>/.
    """
    from dpgov.data.validation import validate
    from dpgov.errors import Refused, UsageError
    from dpgov.gate.in_force import policy_in_force
    from dpgov.ledger import Ledger

    params, s = _settings(params_file, data, contract, dataset, metadata)
    if params.policy is not None:
        raise UsageError(
            "data.policy: the policy is no longer a data setting; validation reads the policy "
            "in force on the ledger (`dpgov policy set FILE --reason TEXT`): remove data.policy"
        )
    from dpgov.data.contract import load_contract

    name = s["dataset"] or load_contract(s["contract"]).contract.dataset  # as validate names it
    ledger = Ledger.open()
    try:
        in_force = policy_in_force(ledger, name)
    finally:
        ledger.close()
    result = validate(
        s["source"],
        s["contract"],
        dataset=s["dataset"],
        prepared=prepared,
        metadata=s["metadata"],
        policy=in_force,
        out=out,
        params=params,
    )

    def render() -> None:
        state = "passed" if result.ok else "FAILED"
        typer.echo(
            f"validation of {result.dataset} {state}: {len(result.checks)} checks, "
            f"{len(result.failed)} failed"
        )
        for check in result.failed:
            typer.echo(f"  FAIL [{check.table}] {check.name}: {check.detail or 'failed'}")
        for check in result.checks:
            if check.severity == "warning" and not check.success:
                typer.echo(f"  warn [{check.table}] {check.name}: {check.detail}")
        typer.echo(f"  results: {result.result_file}, {result.summary_file}")

    emit(as_json, result.to_dict(), render)
    if not result.ok:
        first = result.failed[0]
        raise Refused(
            f"dataset {result.dataset} fails its contract: {len(result.failed)} of "
            f"{len(result.checks)} checks failed (first: {first.name}: "
            f"{first.detail or 'failed'}); see {result.summary_file}"
        )
