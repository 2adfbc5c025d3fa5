"""Scheduled retraining: newest data, blocks with budget left, retirement, or a recorded skip.

The rules live in :mod:`dpgov.training.retraining`; this flow wires them:

newest data version → block budgets (table artifact) → select blocks → retire the exhausted →
either record why nothing can be trained (ledger entry ``retraining_skipped``) or run the
governed steps on the chosen blocks (σ calibrated against what they already spent), gate
included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow

from dpgov.data.prepared_data import load_prepared
from dpgov.errors import Refused
from dpgov.gate.in_force import policy_in_force
from dpgov.ledger import Ledger
from dpgov.training import retraining as rules
from dpgov.training.governed import RunOptions
from dpgov.training.params import prepared_path
from pipelines import run_names, tasks
from pipelines.governed import publish_budgets, run_in_flow, run_params
from pipelines.runtime import clock_snapshot, start_clock
from pipelines.steps import prefect_step

T = TypeVar("T")


class _PlanRefused(Exception):
    """The plan found no noise level the blocks can afford (nothing was reserved)."""

    def __init__(self, err: Refused) -> None:
        super().__init__(str(err))
        self.err = err


def _plan_refusal_is_a_skip(
    name: str, fn: Callable[..., T], /, *args: Any, retry: bool = False, **kwargs: Any
) -> T:
    """The flows' step runner, except that a refused plan ends retraining as a skip."""
    try:
        return prefect_step(name, fn, *args, retry=retry, **kwargs)
    except Refused as err:
        if name == "plan":
            raise _PlanRefused(err) from err
        raise


@flow(name="retraining", flow_run_name=run_names.training_name, persist_result=False)
def retraining(
    params: dict[str, Any] | None = None,
    min_remaining_epsilon: float | None = None,
    require_new_data: bool = False,
    pull: bool = True,
    validation_out: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrain on the newest data with the blocks that have budget left.

    ``params`` as for the governed run (``train.blocks`` is chosen here); the policy is the
    one in force on the ledger for the dataset (`dpgov policy set`).
    ``min_remaining_epsilon``: a block with less ε left is retired (default: a quarter
    of ``train.target_epsilon``). ``require_new_data``: skip when the newest run on the dataset
    already used this data version. ``pull``: fetch DVC-tracked data missing from the workspace.
    Returns ``{"status": "trained" | "skipped", "selection", "budgets", "run"?, "reason"?}``.
    """
    start_clock()
    base = run_params(params)
    folder = str(prepared_path(base))
    version = tasks.newest_data(folder, pull)
    meta = load_prepared(folder).meta
    dataset = str(meta["dataset"])
    floor = (
        min_remaining_epsilon
        if min_remaining_epsilon is not None
        else rules.default_min_remaining(base.train.target_epsilon)
    )
    ledger = Ledger.open()
    try:
        loaded = policy_in_force(ledger, dataset)
        registered = {b.block for b in ledger.blocks(dataset)}
        statuses = tasks.block_budgets(ledger, loaded, dataset) if registered else []
        selection = tasks.select_blocks(
            dataset=dataset,
            data_version=version,
            data_blocks=list(meta["blocks"]),
            statuses=statuses,
            min_remaining=floor,
            last_trained_version=tasks.last_trained(ledger, dataset),
            require_new_data=require_new_data,
        )
        if selection.retire:
            tasks.retire_blocks(ledger, dataset, selection.retire)

        def budget_rows() -> list[dict[str, Any]]:
            return rules.budget_rows(tasks.block_budgets(ledger, loaded, dataset))

        def skipped(reason: str | None) -> dict[str, Any]:
            entry = tasks.record_skip(ledger, selection, reason)
            budgets = budget_rows() if registered else []
            if registered:
                publish_budgets(budgets, dataset)
            return {
                "status": "skipped",
                "reason": entry.payload["reason"],
                "ledger_seq": entry.seq,
                "dataset": dataset,
                "data_version": version,
                "selection": selection.to_dict(),
                "budgets": budgets,
                "timings": clock_snapshot(),
            }

        if selection.skip:
            return skipped(None)

        try:
            run = run_in_flow(
                rules.params_for(base, selection, folder),
                loaded,
                ledger,
                RunOptions(validation_out=validation_out, progress=progress),
                step=_plan_refusal_is_a_skip,
            )
        except _PlanRefused as refused:
            return skipped(f"no noise level fits the blocks' remaining budgets: {refused.err}")
        return {
            "status": "trained",
            "dataset": dataset,
            "data_version": version,
            "selection": selection.to_dict(),
            "budgets": run.budgets,
            "run": run.to_dict(),
            "timings": clock_snapshot(),
        }
    finally:
        ledger.close()
