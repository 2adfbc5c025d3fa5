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

from dpgov.data import ingest
from dpgov.data import prepare as run_prepare
from dpgov.errors import DpgovError
from dpgov.gate import approvals
from dpgov.gate.promotion import PromotionResult
from dpgov.gate.promotion import promote as run_promotion
from dpgov.report.audit import run_audit
from dpgov.tracking.registry import Registry
from dpgov.training import retraining
from pipelines.runtime import timed

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.data import PrepareResult
    from dpgov.data.ingest import DvcRecord, Staged, Wave
    from dpgov.data.params import DataParams
    from dpgov.ledger import BlockStatus, Entry, Ledger
    from dpgov.policy import LoadedPolicy
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


def _registry() -> Registry:
    return Registry()


# --------------------------------------------------------------------------- budgets


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
    with timed("newest_data"):
        return ingest.checkout_newest(prepared, pull=pull)


@task(name="last-trained-version", **RETRY)
def last_trained(ledger: Ledger, dataset: str) -> str | None:
    return retraining.last_trained_version(ledger, dataset)


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
    return retraining.retire(ledger, dataset=dataset, retire=retire)


@task(name="record-skip", **ONCE)
def record_skip(ledger: Ledger, selection: Selection, reason: str | None) -> Entry:
    return retraining.record_skip(ledger, selection, reason=reason)


# --------------------------------------------------------------------------- data


@task(name="prepare", **RETRY)
def prepare(out: str, data_params: DataParams) -> PrepareResult:
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
    return ingest.write_waves(folder, n, params=data_params)


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
    return ingest.stage(
        arrival,
        raw=raw,
        prepared=prepared,
        contract=contract,
        dataset=dataset,
        params=data_params,
    )


@task(name="publish-arrival", **ONCE)
def publish_arrival(staged: Staged) -> Staged:
    return ingest.publish(staged)


@task(name="dvc-version", **RETRY)
def dvc_version(
    root: str, paths: list[str], push: bool, git_commit: bool, message: str
) -> DvcRecord:
    with timed("dvc"):
        return ingest.version_with_dvc(
            root, list(paths), push=push, git_commit=git_commit, message=message
        )


@task(name="register-blocks", **RETRY)
def register_blocks(
    ledger: Ledger, dataset: str, blocks: dict[str, int], data_version: str, prepared: str
) -> list[str]:
    """Register the new blocks with their members' pseudonyms, read from the published folder
    (a block registered without members is charged conservatively: every charge of its domain
    reaches it)."""
    return ingest.register_blocks(
        ledger, dataset=dataset, blocks=blocks, data_version=data_version, prepared=prepared
    )


# --------------------------------------------------------------------------- approval


@task(name="record-approval", **ONCE)
def record_approval(
    model: str, version: str, by: str, note: str, policy: LoadedPolicy, ledger: Ledger
) -> Entry:
    entry, _ = approvals.record_approval(
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
    entry, _ = approvals.record_refusal(
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
def audit(dvc_root: str | None, stale_hours: float) -> dict[str, Any]:
    return run_audit(None, Path(dvc_root) if dvc_root else None, stale_hours)
