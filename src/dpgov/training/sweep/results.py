"""What a sweep produced: each trial's result, the reference's, and the sweep's as a whole.

Plain records (their ``to_dict`` is what ``sweep.json`` and ``trials.csv`` hold), written by
:mod:`dpgov.training.sweep.run` and read by the summary, the outputs and the plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgov.training.sweep.plan import SweepPlan, Trial

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.training.evaluate import Evaluation


@dataclass
class TrialResult:
    trial: Trial
    run_id: str
    reservation: str
    ledger_entries: list[int]
    steps: int
    epsilon_spent: float  # ε of the mechanism committed (the steps actually taken)
    evaluation: Evaluation
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.trial.to_dict(),
            "run_id": self.run_id,
            "reservation": self.reservation,
            "ledger_entries": self.ledger_entries,
            "steps_taken": self.steps,
            "epsilon_spent": self.epsilon_spent,
            "seconds": self.seconds,
            **flat_metrics(self.evaluation),
        }


@dataclass
class ReferenceResult:
    run_id: str
    seed: int
    evaluation: Evaluation

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seed": self.seed, **flat_metrics(self.evaluation)}


@dataclass
class SweepResult:
    sweep_id: str
    parent_run_id: str
    experiment: str
    plan: SweepPlan
    trials: list[TrialResult] = field(default_factory=list)
    reference: ReferenceResult | None = None
    stopped: str | None = None  # why the sweep stopped early (None: it ran every trial)
    block_epsilon: dict[str, float] = field(default_factory=dict)  # spent after the sweep
    summary: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.stopped is None

    def charged(self) -> list[dict[str, Any]]:
        """What the sweep charged: one committed reservation per finished trial."""
        return [
            {
                "trial": t.trial.index,
                "reservation": t.reservation,
                "ledger_entries": t.ledger_entries,
                "epsilon": t.epsilon_spent,
            }
            for t in self.trials
        ]

    def to_dict(self) -> dict[str, Any]:
        planned = len(self.plan.trials)
        return {
            "sweep_id": self.sweep_id,
            "parent_run_id": self.parent_run_id,
            "experiment": self.experiment,
            "complete": self.complete,
            "stopped": self.stopped,
            "trials_planned": planned,
            "trials_run": [t.trial.index for t in self.trials],
            "trials_not_run": [t.index for t in self.plan.trials[len(self.trials) :]],
            "charged": self.charged(),
            "block_epsilon": self.block_epsilon,
            "plan": self.plan.to_dict(),
            "trials": [t.to_dict() for t in self.trials],
            "reference": self.reference.to_dict() if self.reference else None,
            "summary": self.summary,
            "folder": str(self.folder) if self.folder else None,
            "files": self.files,
            "registered_model_versions": 0,
            "seconds": self.seconds,
        }


def flat_metrics(ev: Evaluation) -> dict[str, Any]:
    """One flat mapping of what a trial scored (the columns of ``trials.csv``)."""
    out: dict[str, Any] = {
        "auroc": ev.auroc,
        "auroc_lo": ev.auroc_lo,
        "auroc_hi": ev.auroc_hi,
        "calibration_error": ev.calibration_error,
        "accuracy": ev.accuracy,
        "brier": ev.brier,
    }
    for s in ev.subgroups:
        key = f"subgroup_auroc.{s.attribute}.{s.group}"
        out[key], out[f"{key}_lo"], out[f"{key}_hi"] = s.auroc, s.auroc_lo, s.auroc_hi
    for g in ev.gaps:
        key = f"gap_{g.metric}.{g.attribute}"
        out[key], out[f"{key}_lo"], out[f"{key}_hi"] = g.gap, g.lo, g.hi
    return out
