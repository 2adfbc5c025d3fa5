"""Deployments: serve them here (``dpgov schedule``), or send them to a work pool of workers.

Every deployment names its flow by module path (``pipelines.retraining.retraining``), so any
machine with dpgov installed can run it: a process started by ``flow.serve`` on this machine,
or a worker on a GPU node (``prefect worker start -p POOL``) polling a Prefect server.

=====================  =======================================  ==========================
deployment             flow                                     default schedule
=====================  =======================================  ==========================
retraining/dpgov-...   newest data, blocks with budget left     ``--cron`` (required)
audit/dpgov-audit      the audit                                ``--audit-cron`` (optional)
approval/dpgov-...     pause for an approver's answer           none (triggered)
governed-run/dpgov-run one governed run                         none (triggered)
ingest/dpgov-ingest    version an arrival, register its blocks  none (triggered)
empirical-audit/...    audit one candidate with canaries        none (triggered)
=====================  =======================================  ==========================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect.deployments.runner import EntrypointType

from dpgov.errors import Refused, UsageError
from pipelines.approval import approval, parse_answer
from pipelines.audit import audit
from pipelines.demo import embedded_params
from pipelines.empirical_audit import empirical_audit
from pipelines.governed import governed_run
from pipelines.ingest import ingest
from pipelines.retraining import retraining
from pipelines.runtime import check_deployment_name

if TYPE_CHECKING:  # pragma: no cover
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments.runner import RunnerDeployment

RETRAINING = "dpgov-retraining"
AUDIT = "dpgov-audit"
APPROVAL = "dpgov-approval"
RUN = "dpgov-run"
INGEST = "dpgov-ingest"
EMPIRICAL_AUDIT = "dpgov-empirical-audit"
TAGS = ["dpgov"]


def check_cron(expr: str, option: str = "--cron") -> str:
    """A standard five-field cron expression, or UsageError naming the problem."""
    from pydantic import ValidationError

    fields = expr.split()
    if len(fields) != 5:
        raise UsageError(
            f"{option} {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"found {len(fields)}"
        )
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr)
    except ValidationError as err:
        msg = str(err.errors()[0]["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{option} {expr!r}: not a valid cron expression ({msg})") from err
    return expr


def retraining_parameters(
    params: dict[str, Any] | None,
    *,
    min_remaining_epsilon: float | None = None,
    require_new_data: bool = True,
) -> dict[str, Any]:
    """Defaults of the retraining deployment: the given params, else the embedded ones."""
    return {
        "params": params if params is not None else embedded_params(),
        "min_remaining_epsilon": min_remaining_epsilon,
        "require_new_data": require_new_data,
    }


def build(
    *,
    cron: str | None,
    audit_cron: str | None,
    params: dict[str, Any] | None,
    min_remaining_epsilon: float | None = None,
    require_new_data: bool = True,
) -> list[RunnerDeployment]:
    """The deployments: retraining (on ``cron``), audit (on ``audit_cron``), and the triggered
    ones (approval, governed run, ingest). None takes a policy: each enforces the policy in
    force on the ledger (`dpgov policy set`)."""
    module = EntrypointType.MODULE_PATH
    made = [
        retraining.to_deployment(
            name=RETRAINING,
            cron=cron,
            parameters=retraining_parameters(
                params,
                min_remaining_epsilon=min_remaining_epsilon,
                require_new_data=require_new_data,
            ),
            description="Retrain on the newest data with the blocks that have budget left.",
            tags=TAGS,
            entrypoint_type=module,
        ),
        audit.to_deployment(
            name=AUDIT,
            cron=audit_cron,
            description="Verify the ledger and everything that depends on it.",
            tags=TAGS,
            entrypoint_type=module,
        ),
        approval.to_deployment(
            name=APPROVAL,
            description="Pause for an approver's answer, then promote or record the refusal.",
            tags=TAGS,
            entrypoint_type=module,
        ),
        governed_run.to_deployment(
            name=RUN,
            parameters={"params": params},
            description="One governed DP training run, gate included.",
            tags=TAGS,
            entrypoint_type=module,
        ),
        ingest.to_deployment(
            name=INGEST,
            description="Version newly arrived data with DVC; register its new blocks.",
            tags=TAGS,
            entrypoint_type=module,
        ),
        empirical_audit.to_deployment(
            name=EMPIRICAL_AUDIT,
            description="Audit one candidate with canaries: a lower bound on ε beside its claim.",
            tags=TAGS,
            entrypoint_type=module,
        ),
    ]
    return [cast("RunnerDeployment", d) for d in made]  # sync calls: never coroutines


def serve(deployments: list[RunnerDeployment]) -> None:
    """Serve the deployments from this process until interrupted (schedules included)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, print_starting_message=True)


def deploy_to_pool(pool: str, deployments: list[RunnerDeployment]) -> list[dict[str, Any]]:
    """Create (or update) the deployments on the server, run by the workers of work pool
    ``pool``; the pool is created as a process pool when it does not exist."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        created = False
        try:
            work_pool = client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                work_pool = client.create_work_pool(
                    WorkPoolCreate(
                        name=pool,
                        type="process",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                        description="dpgov workers (GPU nodes: `prefect worker start -p POOL`)",
                    )
                )
                created = True
            except ObjectAlreadyExists:  # a worker started meanwhile created it
                work_pool = client.read_work_pool(pool)
    out = []
    for d in deployments:
        deployment_id = d.apply(work_pool_name=pool)
        out.append(
            {
                "name": f"{d.flow_name}/{d.name}",
                "id": str(deployment_id),
                "work_pool": pool,
                "work_pool_type": work_pool.type,
                "pool_created": created,
                "schedules": [_cron(s) for s in (d.schedules or [])],
            }
        )
    return out


def _cron(schedule: Any) -> str | None:
    inner = getattr(schedule, "schedule", schedule)
    return getattr(inner, "cron", None)


def known_deployments() -> list[str]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        found = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    return sorted(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in found)


def trigger(name: str, parameters: dict[str, Any], *, timeout: float | None = 0) -> dict[str, Any]:
    """Start a run of deployment ``name`` (``flow/deployment``); with a timeout, wait for it.
    Unknown deployments: UsageError listing the known ones."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    check_deployment_name(name)
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound as err:
            known = ", ".join(known_deployments()) or "none (run `dpgov flows deploy` first)"
            raise UsageError(f"unknown deployment {name!r}; known: {known}") from err
    run = cast("FlowRun", run_deployment(name, parameters=parameters, timeout=timeout))
    state = run.state
    out = {
        "deployment": name,
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "state": state.type.value if state else None,
        "state_name": state.name if state else None,
        "message": state.message if state else None,
    }
    if timeout and state is not None and state.is_final() and not state.is_completed():
        raise Refused(
            f"flow run {run.name} ({run.id}) of {name} ended {state.name}: {state.message}"
        )
    return out


def answer(flow_run_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Resume a paused approval flow run with an approver's answer (checked first)."""
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    checked = parse_answer(data)
    try:
        run_id = UUID(flow_run_id)
    except ValueError as err:
        raise UsageError(f"FLOW_RUN_ID {flow_run_id!r} is not a flow run id (a UUID)") from err
    try:
        resume_flow_run(
            run_id,
            run_input=checked.model_dump(include={"decision", "approver", "note", "signature"}),
        )
    except ObjectNotFound as err:
        raise UsageError(f"no flow run {flow_run_id}") from err
    except Exception as err:
        name = type(err).__name__
        if name in ("NotPausedError", "FlowPauseTimeout") or isinstance(err, RuntimeError):
            text = str(err).strip().splitlines()[0] if str(err).strip() else name
            raise UsageError(f"flow run {flow_run_id} did not take the answer: {text}") from err
        raise
    return {
        "flow_run_id": flow_run_id,
        **checked.model_dump(include={"decision", "approver", "note"}),
        "signed": bool(checked.signature.strip()),
    }
