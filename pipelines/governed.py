"""The governed run: validate → plan → reserve → train → commit → evaluate → track → gate.

:func:`governed_run` is the flow (``dpgov run``); :func:`run_steps` is the same sequence of
tasks for use inside another flow (retraining, the demo). After the gate it publishes two
artifacts: the decision as Markdown (``gate-decision``) and the dataset's block budgets as a
table (``block-budgets``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow

from dpgov.errors import Refused, UsageError
from pipelines import tasks
from pipelines.runtime import clock_snapshot, start_clock

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.data.params import DataParams
    from dpgov.ledger import Ledger
    from dpgov.policy import LoadedPolicy
    from dpgov.training.params import RunParams


def run_params(params: dict[str, Any] | None) -> RunParams:
    """The run's params: a mapping shaped like params.yaml, or the default params file."""
    from dpgov.training.params import load_params, parse_params

    return load_params() if params is None else parse_params(params, source="params")


def data_params(params: RunParams) -> DataParams:
    """The ``data:`` section as dpgov.data reads it (unknown keys: UsageError)."""
    from pydantic import ValidationError

    from dpgov.data.params import DataParams

    try:
        return DataParams.model_validate(params.data or {})
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        raise UsageError(f"params: data.{loc}: {msg} (found {e.get('input')!r})") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def run_steps(
    params: RunParams,
    policy: LoadedPolicy,
    ledger: Ledger,
    *,
    validation_out: str | None = None,
    gate: bool = True,
    progress: bool = False,
    on_plan_refused: Callable[[Refused], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every step of one governed run as tasks of the calling flow; returns the run summary
    (the shape of ``RunSummary.to_dict()``) with ``validation``, ``gate`` and ``timings``.

    ``on_plan_refused``: when the plan finds no σ the blocks can afford (nothing reserved),
    return what it returns instead of raising.
    """
    from dpgov.training.params import prepared_path

    started = time.perf_counter()
    folder = str(prepared_path(params))
    validated = tasks.validate(folder, data_params(params), str(policy.path), validation_out)
    data, version = tasks.load_data(folder)
    try:
        p = tasks.plan(params, policy, data, ledger, version)
    except Refused as err:
        if on_plan_refused is None:
            raise
        return on_plan_refused(err)
    reservation = tasks.reserve(p, ledger)
    outcome = tasks.train(p, reservation, ledger, progress)
    try:
        entry = tasks.commit(reservation, outcome, ledger)
        evals = tasks.evaluate(p, outcome, progress)
    except BaseException as err:  # the ledger keeps the charge; MLflow shows the failure
        _end_failed(outcome.run_id, err)
        raise
    tracked = tasks.track(p, reservation, outcome, entry, evals, ledger)
    summary: dict[str, Any] = {
        "plan": p.summary(),
        "reservation": reservation.id,
        "ledger_entries": [reservation.seq, entry.seq],
        "steps": outcome.result.steps,
        "epsilon": float(tracked.facts["epsilon"]),
        "block_epsilon": tracked.block_epsilon,
        "run_id": tracked.run_id,
        "model_name": tracked.model_name,
        "model_version": tracked.model_version,
        "reference_run_id": tracked.reference_run_id,
        "reference_version": tracked.reference_version,
        "auroc": evals.private.auroc,
        "reference_auroc": evals.reference.auroc if evals.reference is not None else None,
        "subgroups": evals.private.table(),
        "gaps": [g.model_dump() for g in evals.private.gaps],
        "reference_gaps": (
            [g.model_dump() for g in evals.reference.gaps] if evals.reference is not None else None
        ),
        "validation": validated.to_dict(),
        "training_loop_seconds": float(sum(outcome.result.epoch_seconds)),
        "reference_loop_seconds": (
            float(sum(evals.reference_result.epoch_seconds))
            if evals.reference_result is not None
            else 0.0
        ),
    }
    summary["budgets"] = publish_budgets(ledger, policy, p.dataset)
    model_version = tracked.model_version
    summary["gate"] = (
        run_gate(tracked.model_name, model_version, policy, ledger)
        if gate and model_version
        else None
    )
    summary["seconds"] = time.perf_counter() - started
    summary["timings"] = clock_snapshot()
    return summary


def _end_failed(run_id: str, err: BaseException) -> None:
    try:
        from dpgov.tracking import runs

        runs.end_run(run_id, failed=True, reason=_first_line(err))
    except Exception:  # pragma: no cover - the original error matters more
        import logging

        logging.getLogger(__name__).exception("could not mark the MLflow run failed")


def publish_budgets(ledger: Ledger, policy: LoadedPolicy, dataset: str) -> list[dict[str, Any]]:
    """The dataset's block budgets, published as a table artifact; returns the rows."""
    from dpgov.training.retraining import budget_rows

    rows = budget_rows(tasks.block_budgets(ledger, policy, dataset))
    tasks.publish_budgets(rows, f"privacy budget per block of {dataset} (ε spent rounded up)")
    return rows


def run_gate(model: str, version: str, policy: LoadedPolicy, ledger: Ledger) -> dict[str, Any]:
    """The gate now, recorded, and published as a Markdown artifact; returns the decision."""
    from dpgov.gate.markdown import decision_markdown

    result = tasks.gate(model, version, policy, ledger)
    decision = result.decision.to_dict()
    seq = result.entry.seq if result.entry else None
    tasks.publish_decision(
        decision_markdown(decision, policy_path=str(policy.path), ledger_seq=seq),
        f"gate decision for {model} version {version}",
    )
    return {**decision, "ledger_seq": seq, "policy_path": str(policy.path)}


@flow(name="governed-run", persist_result=False)
def governed_run(
    params: dict[str, Any] | None = None,
    policy: str | None = None,
    validation_out: str | None = None,
    gate: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """One governed DP training run (``dpgov run``).

    ``params``: a mapping shaped like params.yaml (``data``, ``train``, ``model``); None reads
    ./params.yaml, else the embedded defaults. ``policy``: a policy file (None: the default).
    ``validation_out``: where validation results go (default data/validation/<dataset>).
    """
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy

    start_clock()
    loaded = load_policy(Path(policy) if policy else None)
    ledger = Ledger.open()
    try:
        return run_steps(
            run_params(params),
            loaded,
            ledger,
            validation_out=validation_out,
            gate=gate,
            progress=progress,
        )
    finally:
        ledger.close()
