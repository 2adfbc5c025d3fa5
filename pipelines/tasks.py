"""The Prefect tasks of dpgov's flows: each one call into ``dpgov``.

Retries only where a retry cannot spend privacy twice or record twice: reading (data versions,
budgets), validating, the gate and idempotent writes (DVC, block registration) retry on
transient errors; reserve, train, commit, track, retirement, approvals and promotion never
retry. A dpgov error (bad input, a refusal) is never retried: it would only fail again. No
task caches or persists its result: every run plans, reserves and trains afresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from dpgov.errors import DpgovError
from pipelines.runtime import timed

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.data import PrepareResult
    from dpgov.data.ingest import DvcRecord, Staged, Wave
    from dpgov.data.params import DataParams
    from dpgov.data.validated import Validated
    from dpgov.gate.promotion import PromotionResult
    from dpgov.gate.service import GateResult
    from dpgov.ledger import BlockStatus, Entry, Ledger, Reservation
    from dpgov.policy import LoadedPolicy
    from dpgov.training.governed import EvalOutcome, RunPlan, TrackOutcome, TrainOutcome
    from dpgov.training.params import RunParams
    from dpgov.training.retraining import Selection


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only errors that are not dpgov's (bad input and refusals fail the same again)."""
    exc = getattr(state, "data", None)
    return not isinstance(exc, DpgovError | KeyboardInterrupt)


ONCE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False, "retries": 0}
RETRY: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "persist_result": False,
    "retries": 2,
    "retry_delay_seconds": 2,
    "retry_condition_fn": transient,
}


def _registry() -> Any:
    from dpgov.tracking.registry import Registry

    return Registry()


# --------------------------------------------------------------------------- governed run


@task(name="validate", **RETRY)
def validate(
    prepared: str, data_params: DataParams, policy: str | None, out: str | None
) -> Validated:
    from dpgov.data.validated import ensure_validated

    with timed("validate"):
        return ensure_validated(prepared, data_params=data_params, policy=policy, out=out)


@task(name="load-data", **RETRY)
def load_data(prepared: str) -> tuple[Any, str]:
    from dpgov.training.governed import load_data as load

    with timed("load_data"):
        return load(prepared)


@task(name="plan", **ONCE)
def plan(
    params: RunParams, policy: LoadedPolicy, data: Any, ledger: Ledger, data_version: str
) -> RunPlan:
    from dpgov.training import governed

    with timed("plan"):
        return governed.plan(params, policy, data, ledger=ledger, data_version=data_version)


@task(name="reserve", **ONCE)
def reserve(p: RunPlan, ledger: Ledger) -> Reservation:
    from dpgov.training import governed

    with timed("reserve"):
        return governed.reserve(p, ledger=ledger)


@task(name="train", **ONCE)
def train(p: RunPlan, reservation: Reservation, ledger: Ledger, progress: bool) -> TrainOutcome:
    from dpgov.training import governed

    with timed("train"):
        return governed.train(p, reservation, ledger=ledger, progress=progress)


@task(name="commit", **ONCE)
def commit(reservation: Reservation, outcome: TrainOutcome, ledger: Ledger) -> Entry:
    from dpgov.training import governed

    with timed("commit"):
        return governed.commit(reservation, outcome, ledger=ledger)


@task(name="evaluate", **ONCE)
def evaluate(p: RunPlan, outcome: TrainOutcome, progress: bool) -> EvalOutcome:
    from dpgov.training import governed

    with timed("evaluate"):
        return governed.evaluate(p, outcome, progress=progress)


@task(name="track", **ONCE)
def track(
    p: RunPlan,
    reservation: Reservation,
    outcome: TrainOutcome,
    commit_entry: Entry,
    evals: EvalOutcome,
    ledger: Ledger,
) -> TrackOutcome:
    from dpgov.training import governed

    with timed("track"):
        return governed.track(p, reservation, outcome, commit_entry, evals, ledger=ledger)


@task(name="gate", **RETRY)
def gate(model: str, version: str, policy: LoadedPolicy, ledger: Ledger) -> GateResult:
    from dpgov.gate.service import run_gate

    with timed("gate"):
        return run_gate(model, version, policy, ledger, _registry())


@task(name="block-budgets", **RETRY)
def block_budgets(ledger: Ledger, policy: LoadedPolicy, dataset: str) -> list[BlockStatus]:
    with timed("budgets"):
        return ledger.budget(policy.policy.budget, dataset=dataset)


# --------------------------------------------------------------------------- artifacts


@task(name="publish-decision", **RETRY)
def publish_decision(markdown: str, description: str) -> None:
    with timed("artifacts"):
        create_markdown_artifact(markdown=markdown, key="gate-decision", description=description)


@task(name="publish-markdown", **RETRY)
def publish_markdown(markdown: str, key: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=key, description=description)


@task(name="publish-budgets", **RETRY)
def publish_budgets(rows: list[dict[str, Any]], description: str) -> None:
    with timed("artifacts"):
        create_table_artifact(table=rows, key="block-budgets", description=description)


# --------------------------------------------------------------------------- retraining


@task(name="newest-data", **RETRY)
def newest_data(prepared: str, pull: bool) -> str:
    from dpgov.data.ingest import checkout_newest

    with timed("newest_data"):
        return checkout_newest(prepared, pull=pull)


@task(name="last-trained-version", **RETRY)
def last_trained(ledger: Ledger, dataset: str) -> str | None:
    from dpgov.training.retraining import last_trained_version

    return last_trained_version(ledger, dataset)


@task(name="select-blocks", **ONCE)
def select_blocks(
    *,
    dataset: str,
    data_version: str,
    data_blocks: list[str],
    statuses: list[BlockStatus],
    min_remaining: float,
    last_trained_version: str | None,
    require_new_data: bool,
) -> Selection:
    from dpgov.training import retraining

    return retraining.select_blocks(
        dataset=dataset,
        data_version=data_version,
        data_blocks=data_blocks,
        statuses=list[Any](statuses),
        min_remaining=min_remaining,
        last_trained_version=last_trained_version,
        require_new_data=require_new_data,
    )


@task(name="retire-blocks", **ONCE)
def retire_blocks(ledger: Ledger, dataset: str, retire: list[tuple[str, str]]) -> list[Entry]:
    from dpgov.training import retraining

    return retraining.retire(ledger, dataset=dataset, retire=retire)


@task(name="record-skip", **ONCE)
def record_skip(ledger: Ledger, selection: Selection, reason: str | None) -> Entry:
    from dpgov.training import retraining

    return retraining.record_skip(ledger, selection, reason=reason)


# --------------------------------------------------------------------------- data


@task(name="prepare", **RETRY)
def prepare(out: str, data_params: DataParams) -> PrepareResult:
    from dpgov.data import prepare as run_prepare

    with timed("prepare"):
        source = (
            None if data_params.source in ("bundled:flchain", "flchain") else data_params.source
        )
        return run_prepare(
            source,
            data_params.contract,
            dataset=data_params.dataset,
            out=out,
            metadata=data_params.metadata,
            params=data_params,
        )


@task(name="write-waves", **RETRY)
def write_waves(folder: str, n: int, data_params: DataParams) -> list[Wave]:
    from dpgov.data.ingest import write_waves as write

    return write(folder, n, params=data_params)


# --------------------------------------------------------------------------- ingest


@task(name="stage-arrival", **ONCE)
def stage_arrival(
    arrival: str,
    raw: str,
    prepared: str,
    contract: str | None,
    dataset: str | None,
    data_params: DataParams,
) -> Staged:
    from dpgov.data.ingest import stage

    return stage(
        arrival,
        raw=raw,
        prepared=prepared,
        contract=contract,
        dataset=dataset,
        params=data_params,
    )


@task(name="publish-arrival", **ONCE)
def publish_arrival(staged: Staged) -> Staged:
    from dpgov.data.ingest import publish

    return publish(staged)


@task(name="dvc-version", **RETRY)
def dvc_version(
    root: str, paths: list[str], push: bool, git_commit: bool, message: str
) -> DvcRecord:
    from dpgov.data.ingest import version_with_dvc

    with timed("dvc"):
        return version_with_dvc(
            root, list(paths), push=push, git_commit=git_commit, message=message
        )


@task(name="register-blocks", **RETRY)
def register_blocks(
    ledger: Ledger, dataset: str, blocks: dict[str, int], data_version: str
) -> list[str]:
    from dpgov.data.ingest import register_blocks as register

    return register(ledger, dataset=dataset, blocks=blocks, data_version=data_version)


# --------------------------------------------------------------------------- approval


@task(name="record-approval", **ONCE)
def record_approval(
    model: str, version: str, by: str, note: str, policy: LoadedPolicy, ledger: Ledger
) -> Entry:
    from dpgov.gate.approvals import record_approval as record

    entry, _ = record(
        model=model,
        version=version,
        by=by,
        note=note,
        policy=policy,
        ledger=ledger,
        registry=_registry(),
    )
    return entry


@task(name="record-refusal", **ONCE)
def record_refusal(
    model: str, version: str, by: str, reason: str, policy: LoadedPolicy, ledger: Ledger
) -> Entry:
    from dpgov.gate.approvals import record_refusal as record

    entry, _ = record(
        model=model,
        version=version,
        by=by,
        reason=reason,
        policy=policy,
        ledger=ledger,
        registry=_registry(),
    )
    return entry


@task(name="promote", **ONCE)
def promote(
    model: str, version: str, policy: LoadedPolicy, ledger: Ledger, alias: str | None
) -> PromotionResult:
    from dpgov.gate.promotion import promote as run_promotion

    return run_promotion(
        model=model,
        version=version,
        policy=policy,
        ledger=ledger,
        registry=_registry(),
        alias=alias,
    )


# --------------------------------------------------------------------------- audit


@task(name="audit", **RETRY)
def audit(policy: str | None, dvc_root: str | None, stale_hours: float) -> dict[str, Any]:
    from pipelines.audit import run_audit

    return run_audit(policy, Path(dvc_root) if dvc_root else None, stale_hours)
