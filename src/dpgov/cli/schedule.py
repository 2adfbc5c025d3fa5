"""``dpgov schedule`` (serve or deploy the retraining schedule) and ``dpgov flows ...``
(trigger deployments, run or answer an approval, ingest an arrival).

Exit codes: 0 done; 1 a triggered run ended other than Completed; 2 bad input (a cron
expression, an unknown deployment, an approval answer with missing fields, an unreachable
Prefect server): one line, nothing started. Prefect is imported inside the commands only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import typer

from dpgov.cli._output import JsonOption, NoPolicyOption, either, emit, hidden_alias

flows_app = typer.Typer(
    help="Run dpgov's Prefect flows: trigger deployments, approvals, ingest.",
    no_args_is_help=True,
)

ParamsOption = typer.Option(
    None,
    "--params",
    help="Params YAML for retraining (default: the embedded defaults).",
    show_default=False,
)


def register(app: typer.Typer) -> None:
    app.command("schedule")(schedule)
    app.add_typer(flows_app, name="flows")


def _say(quiet: bool) -> Any:
    return None if quiet else (lambda line: typer.echo(line, err=True))


def _params_dict(params: Path | None) -> dict[str, Any] | None:
    from dpgov.training.params import load_params
    from pipelines.preflight import check_run_params

    if params is None:
        return None
    loaded = load_params(params)
    check_run_params(loaded)  # the data: section and its contract, before any server starts
    return loaded.model_dump(mode="json")


def schedule(
    cron: str = typer.Option(
        ...,
        "--cron",
        help="When to retrain, as a cron expression (e.g. '0 3 1 * *').",
        show_default=False,
    ),
    audit_cron: str | None = typer.Option(
        None, "--audit-cron", help="Also audit on this cron schedule.", show_default=False
    ),
    pool: str | None = typer.Option(
        None,
        "--pool",
        help="Send the deployments to this work pool (its workers run them: "
        "`prefect worker start -p POOL`) instead of serving them from this process.",
        show_default=False,
    ),
    params: Path | None = ParamsOption,
    policy: Path | None = NoPolicyOption,
    min_remaining: float | None = typer.Option(
        None,
        "--min-remaining",
        min=0.0,
        help="Retire blocks with less ε left (default: a quarter of train.target_epsilon).",
        show_default=False,
    ),
    as_json: bool = JsonOption,
) -> None:
    """Serve the retraining deployment on a cron schedule (with the embedded defaults unless
    --params), plus the audit, approval, run and ingest deployments; or, with --pool, send
    them to a work pool and return. Every one enforces the policy in force on the ledger
    (`dpgov policy set`)."""
    from pipelines.deployments import check_cron
    from pipelines.runtime import orchestrate

    check_cron(cron)
    if audit_cron is not None:
        check_cron(audit_cron, "--audit-cron")
    if pool is not None and not pool.strip():
        from dpgov.errors import UsageError

        raise UsageError("--pool: the work pool name is empty")
    run_params = _params_dict(params)

    def build() -> Any:
        from pipelines.deployments import build as build_deployments

        return build_deployments(
            cron=cron,
            audit_cron=audit_cron,
            params=run_params,
            min_remaining_epsilon=min_remaining,
        )

    if pool is not None:
        from pipelines.runtime import configure_env, configured_api_url

        configure_env()
        if not configured_api_url():
            from dpgov.errors import UsageError

            raise UsageError(
                f"--pool {pool}: set PREFECT_API_URL to the Prefect server its workers poll "
                "(`prefect server start`, then `prefect worker start -p POOL` on each node)"
            )

        def deploy() -> list[dict[str, Any]]:
            from pipelines.deployments import deploy_to_pool

            return deploy_to_pool(pool, build())

        deployed, timings = orchestrate(deploy, say=_say(as_json))

        def render() -> None:
            for d in deployed:
                when = ", ".join(c for c in d["schedules"] if c) or "triggered"
                typer.echo(f"deployed {d['name']} to work pool {d['work_pool']} ({when})")
            typer.echo(f"workers: prefect worker start -p {pool}  (on each GPU node)")

        emit(as_json, {"deployments": deployed, "orchestration": timings}, render)
        return

    def serve() -> None:
        from pipelines.deployments import serve as serve_deployments

        typer.echo(
            f"serving retraining on '{cron}'"
            + (f" and the audit on '{audit_cron}'" if audit_cron else "")
            + " (Ctrl-C to stop)",
            err=True,
        )
        serve_deployments(build())

    orchestrate(serve, say=_say(as_json), scheduler=True)


def _parse_param(text: str) -> tuple[str, Any]:
    from dpgov.errors import UsageError

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--param {text!r}: expected KEY=VALUE (VALUE as JSON, or text)")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


@flows_app.command("run")
def run_deployment_cmd(
    name: str = typer.Argument(..., help="Deployment as FLOW/DEPLOYMENT.", show_default=False),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="KEY=VALUE parameter (VALUE as JSON, or text); repeatable."
    ),
    wait: float = typer.Option(
        0.0, "--wait", min=0.0, help="Seconds to wait for the run to finish (0: do not wait)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Start a run of a deployment (on the server's workers or serving process)."""
    from dpgov.errors import Refused
    from pipelines.runtime import check_deployment_name, orchestrate

    check_deployment_name(name)
    parameters = dict(_parse_param(p) for p in param)

    def call() -> dict[str, Any]:
        from pipelines.deployments import trigger

        return trigger(name, parameters, timeout=wait or 0)

    result, _ = orchestrate(call)
    emit(
        as_json,
        result,
        lambda: typer.echo(
            f"{result['deployment']}: flow run {result['flow_run_name']} "
            f"({result['flow_run_id']}) {result['state_name']}"
        ),
    )
    if wait and result.get("state") not in ("COMPLETED",):
        raise Refused(
            f"flow run {result['flow_run_id']} is {result['state_name']} after {wait:g} s"
        )


@flows_app.command("answer")
def answer_cmd(
    flow_run_id: str = typer.Argument(
        ..., help="The paused approval flow run.", show_default=False
    ),
    decision: str | None = typer.Option(
        None, "--decision", help="approve or refuse.", show_default=False
    ),
    by: str | None = typer.Option(None, "--by", help="Who decides.", show_default=False),
    note: str | None = typer.Option(
        None, "--note", help="Why (required to refuse).", show_default=False
    ),
    signature: Path | None = typer.Option(
        None,
        "--signature",
        help="The approver's SSH signature file (ssh-keygen -Y sign -n dpgov-approval) over "
        "the message the paused flow shows: an answer counts only with it.",
        show_default=False,
    ),
    as_json: bool = JsonOption,
) -> None:
    """Answer a paused approval flow: approve (it then promotes) or refuse."""
    from pipelines.runtime import orchestrate

    signed: str | None = None
    if signature is not None:
        from dpgov.errors import UsageError

        try:
            signed = signature.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(
                f"--signature {signature}: cannot be read as an SSH signature"
            ) from err
    data = {
        k: v
        for k, v in {
            "decision": decision,
            "approver": by,
            "note": note,
            "signature": signed,
        }.items()
        if v is not None
    }
    from dpgov import names
    from pipelines.approval import parse_answer

    parse_answer(data)  # missing fields: one line, exit 2, before anything starts
    names.options(by=by)
    try:
        UUID(flow_run_id)
    except ValueError as err:
        from dpgov.errors import UsageError

        raise UsageError(f"FLOW_RUN_ID {flow_run_id!r} is not a flow run id (a UUID)") from err

    def call() -> dict[str, Any]:
        from pipelines.deployments import answer

        return answer(flow_run_id, data)

    result, _ = orchestrate(call)
    emit(
        as_json,
        result,
        lambda: typer.echo(
            f"answered flow run {flow_run_id}: {result['decision']} by {result['approver']}"
        ),
    )


@flows_app.command("approval")
def approval_cmd(
    model: str = typer.Argument(..., help="Registered model name.", show_default=False),
    version: str = typer.Argument(..., help="Model version number.", show_default=False),
    policy: Path | None = NoPolicyOption,
    timeout: int = typer.Option(
        3600, "--timeout", min=1, help="Seconds to wait for an answer before failing."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Run the approval flow here: show the gate, pause for an answer (Prefect UI, or
    `dpgov flows answer FLOW_RUN_ID ...`), then promote or record the refusal."""
    from dpgov.gate.service import parse_version
    from pipelines.runtime import orchestrate

    version = parse_version(version)

    def call() -> dict[str, Any]:
        from pipelines.approval import approval

        return approval(
            model,
            version,
            timeout_seconds=timeout,
            poll_interval=2,
            announce=not as_json,
        )

    result, _ = orchestrate(call, say=_say(as_json))
    emit(as_json, result, lambda: typer.echo(f"{model} version {version}: {result['status']}"))


@flows_app.command("ingest")
def ingest_cmd(
    arrival: Path = typer.Argument(
        ..., help="Newly arrived records (CSV or Parquet).", show_default=False
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="The dataset's raw table, appended to (as data prepare --data). Required.",
        show_default=False,
    ),
    raw: Path | None = hidden_alias("--data", "--raw"),
    prepared: Path = typer.Option(
        ..., "--prepared", help="Its prepared folder.", show_default=False
    ),
    dvc_root: Path | None = typer.Option(
        None,
        "--dvc-root",
        help="The DVC repository holding both (as audit --dvc-root). Default: here.",
        show_default=False,
    ),
    repo: Path | None = hidden_alias("--dvc-root", "--repo"),
    contract: Path | None = typer.Option(
        None, "--contract", help="Data contract YAML.", show_default=False
    ),
    params: Path | None = typer.Option(
        None, "--params", help="params.yaml (data: section).", show_default=False
    ),
    no_push: bool = typer.Option(False, "--no-push", help="Do not push to the DVC remote."),
    git_commit: bool = typer.Option(False, "--git-commit", help="Commit the DVC files to git."),
    as_json: bool = JsonOption,
) -> None:
    """Version an arrival with DVC (add, commit, push) and register its new blocks."""
    from dpgov.errors import UsageError
    from pipelines.runtime import orchestrate

    source = either(data, raw, name="--data", old="--raw")
    if source is None:
        raise UsageError("--data: give the dataset's raw table (the file arrivals append to)")
    root = either(dvc_root, repo, name="--dvc-root", old="--repo") or Path(".")
    run_params = _params_dict(params)

    def call() -> dict[str, Any]:
        from pipelines.ingest import ingest

        return ingest(
            arrival=str(arrival),
            raw=str(source),  # the flow's parameters keep their names (deployments use them)
            prepared=str(prepared),
            repo=str(root),
            contract=str(contract) if contract else None,
            params=run_params if run_params is not None else {},
            push=not no_push,
            git_commit=git_commit,
        )

    result, _ = orchestrate(call, say=_say(as_json))

    def render() -> None:
        typer.echo(
            f"ingested {result['records']} records into {result['dataset']} "
            f"({result['total_records']} in all), data version {result['data_version']}"
        )
        typer.echo(
            f"  new blocks: {', '.join(result['new_blocks']) or 'none'}; registered: "
            f"{', '.join(result['registered']) or 'none'}"
        )

    emit(as_json, result, render)
