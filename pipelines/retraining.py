"""Scheduled retraining: newest data, blocks with budget left, retirement, or a recorded skip.

The rules live in :mod:`dpgov.training.retraining`; this flow wires them:

newest data version → block budgets (table artifact) → select blocks → retire the exhausted →
either record why nothing can be trained (ledger entry ``retraining_skipped``) or run the
governed steps on the chosen blocks (σ calibrated against what they already spent), gate
included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from dpgov.errors import Refused
from pipelines import tasks
from pipelines.governed import publish_budgets, run_params, run_steps
from pipelines.runtime import clock_snapshot, start_clock


@flow(name="retraining", persist_result=False)
def retraining(
    params: dict[str, Any] | None = None,
    policy: str | None = None,
    min_remaining_epsilon: float | None = None,
    require_new_data: bool = False,
    pull: bool = True,
    validation_out: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrain on the newest data with the blocks that have budget left.

    ``params``/``policy`` as for the governed run (``train.blocks`` is chosen here).
    ``min_remaining_epsilon``: a block with less ε left is retired (default: a quarter
    of ``train.target_epsilon``). ``require_new_data``: skip when the newest run on the dataset
    already used this data version. ``pull``: fetch DVC-tracked data missing from the workspace.
    Returns ``{"status": "trained" | "skipped", "selection", "budgets", "run"?, "reason"?}``.
    """
    from dpgov.data.prepared import load_prepared
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.training import retraining as rules
    from dpgov.training.params import prepared_path

    start_clock()
    base = run_params(params)
    loaded = load_policy(Path(policy) if policy else None)
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

        def skipped(reason: str | None) -> dict[str, Any]:
            entry = tasks.record_skip(ledger, selection, reason)
            return {
                "status": "skipped",
                "reason": entry.payload["reason"],
                "ledger_seq": entry.seq,
                "dataset": dataset,
                "data_version": version,
                "selection": selection.to_dict(),
                "budgets": publish_budgets(ledger, loaded, dataset) if registered else [],
                "timings": clock_snapshot(),
            }

        if selection.skip:
            return skipped(None)

        def refused(err: Refused) -> dict[str, Any]:
            return skipped(f"no noise level fits the blocks' remaining budgets: {err}")

        run = run_steps(
            rules.params_for(base, selection, folder),
            loaded,
            ledger,
            validation_out=validation_out,
            progress=progress,
            on_plan_refused=refused,
        )
        if run.get("status") == "skipped":
            return run
        return {
            "status": "trained",
            "dataset": dataset,
            "data_version": version,
            "selection": selection.to_dict(),
            "budgets": run["budgets"],
            "run": run,
            "timings": clock_snapshot(),
        }
    finally:
        ledger.close()
