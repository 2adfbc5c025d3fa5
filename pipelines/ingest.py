"""Ingest newly arrived raw data: stage → publish → DVC (add, commit, push) → new blocks.

The rules live in :mod:`dpgov.data.ingest`: an arrival is appended to the dataset's raw table,
prepared in a staging folder and refused if any patient is already present or any prepared
patient would change block or split; then the raw table and the prepared folder are versioned
with DVC and pushed to the remote, and the new blocks are registered in the ledger with the
data version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from dpgov.ledger import Ledger
from dpgov.training.params import data_params
from pipelines import run_names, tasks
from pipelines.governed import run_params


@flow(name="ingest", flow_run_name=run_names.ingest_name, persist_result=False)
def ingest(
    arrival: str,
    raw: str,
    prepared: str,
    repo: str = ".",
    contract: str | None = None,
    params: dict[str, Any] | None = None,
    push: bool = True,
    git_commit: bool = False,
) -> dict[str, Any]:
    """Version newly arrived data and register its patients as new blocks.

    ``arrival``: the new records (CSV or Parquet, the raw table's columns). ``raw``: the
    dataset's raw table (created on the first arrival). ``prepared``: its prepared folder.
    ``repo``: the DVC repository holding both. ``contract``: the data contract (default: the
    ``data:`` section's, else the bundled flchain one). ``git_commit``: also commit the DVC
    files to git (only them).
    """
    section = data_params(run_params(params))
    staged = tasks.stage_arrival(
        arrival,
        raw,
        prepared,
        contract if contract is not None else section.contract,
        section.dataset,
        section,
    )
    tasks.publish_arrival(staged)
    record = tasks.dvc_version(
        str(Path(repo).resolve()),
        [staged.raw, staged.prepared],
        push,
        git_commit,
        f"dpgov ingest {Path(arrival).name}: {staged.dataset} {staged.data_version}",
    )
    ledger = Ledger.open()
    try:
        added = tasks.register_blocks(
            ledger, staged.dataset, staged.blocks, staged.data_version, staged.prepared
        )
    finally:
        ledger.close()
    return {
        "dataset": staged.dataset,
        "arrival": staged.arrival,
        "records": staged.n_arrival,
        "total_records": staged.n_total,
        "data_version": staged.data_version,
        "blocks": staged.blocks,
        "new_blocks": staged.new_blocks,
        "registered": added,
        "raw": staged.raw,
        "prepared": staged.prepared,
        "dvc": record.to_dict(),
    }
