"""The ``evaluate`` stage of ``dvc.yaml``: the governed run's figures as DVC metrics.

``train`` (``dpgov run --json > runs/run.json``) is the whole governed run: validate, plan,
reserve, train, commit, evaluate, track, gate. Its model goes to the MLflow registry as a
candidate and leaves only through the gate; DVC sees only small files. ``evaluate`` reads that
run's own evaluation and gate decision (it does not evaluate again: another pass over the test
split would be one more use of data the policy may budget) and writes

- ``metrics/governed.json``: ε, δ, AUROC (and the reference's), σ, q, steps, the gate's outcome:
  what ``dvc metrics show`` and ``dvc exp show`` compare across experiments;
- ``runs/ids.json``: the MLflow run, the model version, the ledger reservation and entries, the
  data version: where each experiment's model and charge are found.

Usage: ``python -m pipelines.dvc_stage evaluate runs/run.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

METRICS_FILE = Path("metrics/governed.json")
IDS_FILE = Path("runs/ids.json")


def stage_outputs(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, ids) of a ``dpgov run --json`` summary."""
    plan = run.get("plan") or {}
    gate = run.get("gate") or {}
    metrics: dict[str, Any] = {
        "epsilon": run["epsilon"],
        "delta": plan.get("delta"),
        "auroc": run.get("auroc"),
        "reference_auroc": run.get("reference_auroc"),
        "noise_multiplier": plan.get("noise_multiplier"),
        "sample_rate": plan.get("sample_rate"),
        "steps": run.get("steps"),
        "gate_allowed": int(bool(gate.get("allowed"))) if gate else None,
        "gate_failing": len(gate.get("failing") or []) if gate else None,
    }
    ids = {
        "run_id": run["run_id"],
        "model_name": run.get("model_name"),
        "model_version": run.get("model_version"),
        "reservation": run.get("reservation"),
        "ledger_entries": run.get("ledger_entries"),
        "dataset": plan.get("dataset"),
        "blocks": plan.get("blocks"),
        "data_version": plan.get("data_version"),
        "reference_run_id": run.get("reference_run_id"),
        "gate_failing": gate.get("failing") if gate else None,
    }
    return {k: v for k, v in metrics.items() if v is not None}, ids


def evaluate(summary: Path, *, metrics: Path = METRICS_FILE, ids: Path = IDS_FILE) -> None:
    run = json.loads(summary.read_text())
    found, named = stage_outputs(run)
    for path, data in ((metrics, found), (ids, named)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "evaluate":
        print("usage: python -m pipelines.dvc_stage evaluate RUN_JSON", file=sys.stderr)
        return 2
    try:
        evaluate(Path(argv[1]))
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {argv[1]}: not a `dpgov run --json` summary ({err})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
