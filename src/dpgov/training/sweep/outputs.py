"""A sweep's files: ``summary.csv``, ``trials.csv``, ``sweep.json`` (strict JSON) and the plot."""

from __future__ import annotations

import json
from pathlib import Path

from dpgov.contracts import json_safe
from dpgov.training.sweep.plot import plot_tradeoff
from dpgov.training.sweep.results import SweepResult
from dpgov.training.sweep.summary import summary_columns


def write_outputs(result: SweepResult, folder: Path) -> dict[str, str]:
    """``summary.csv``, ``trials.csv``, ``sweep.json`` and ``tradeoff.png`` in ``folder``."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    summary = folder / "summary.csv"
    pd.DataFrame([summary_columns(r) for r in result.summary]).to_csv(summary, index=False)
    files["summary_csv"] = str(summary)
    trials = folder / "trials.csv"
    pd.DataFrame([t.to_dict() for t in result.trials]).to_csv(trials, index=False)
    files["trials_csv"] = str(trials)
    if result.summary:
        plot = folder / "tradeoff.png"
        plot_tradeoff(result, plot)
        files["plot_png"] = str(plot)
    doc = folder / "sweep.json"
    files["sweep_json"] = str(doc)
    data = {**result.to_dict(), "files": files, "folder": str(folder)}
    doc.write_text(json.dumps(json_safe(data), indent=2, default=str))
    return files
