"""The federated run as a Prefect flow (``dpgov federated run``, ``dpgov demo --federated``).

The sequence is :func:`dpgov.federated.run.run_federated`; each of its steps (``open-sites``,
``rounds``, ``track-and-gate``) runs as a task (:func:`pipelines.steps.prefect_step`), then the
flow publishes each site's gate and budget as artifacts. The flow's parameter is the path of
the federation's YAML file, never the federation itself: a site's ledger URL may carry a
password, and flow parameters are stored by the Prefect server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from dpgov.federated.run import FederatedSummary, run_federated
from dpgov.federated.spec import load_spec
from pipelines import tasks
from pipelines.runtime import clock_snapshot, start_clock
from pipelines.steps import prefect_step


def _name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    return f"federated run of {Path(str(params.get('federation', 'federation'))).name}"


@flow(name="federated-run", flow_run_name=_name, persist_result=False)
def federated_run(federation: str, progress: bool = False) -> dict[str, Any]:
    """One federated run from a federation YAML file (docs/federated.md)."""
    start_clock()
    spec = load_spec(federation)
    summary = run_federated(spec, step=prefect_step, on_round=_say if progress else None)
    publish(summary)
    return {**summary.to_dict(), "timings": clock_snapshot()}


def _say(record: Any) -> None:
    import sys

    refused = f", refused: {', '.join(record.refused)}" if record.refused else ""
    print(
        f"round {record.round}: {len(record.participants)} site(s) trained"
        f"{refused} ({record.seconds:.1f} s)",
        file=sys.stderr,
    )


def publish(summary: FederatedSummary) -> None:
    """Each site's gate and budget as one table artifact."""
    gates = {d["site"]: d for d in summary.gate.get("sites", [])}
    rows = [
        {
            "site": s["site"],
            "patients": s["patients"],
            "epsilon_spent": round(float(s["epsilon_spent"]), 4),
            "epsilon_limit": s["epsilon_limit"],
            "rounds_charged": s["rounds_charged"],
            "auroc": s["auroc"],
            "gate": "allowed" if gates.get(s["site"], {}).get("allowed") else "blocked",
            "failing": ", ".join(gates.get(s["site"], {}).get("failing", [])),
        }
        for s in summary.sites
    ]
    tasks.publish_budgets(rows, f"federated {summary.mode}-level run: gate and ε per site")
