"""A privacy–utility–fairness tradeoff study: DP models at several ε beside the non-private
reference, every trial charged to the ledger like any governed run.

Asking "which ε keeps the model accurate and fair?" costs privacy too: every trial of a sweep
is a release of the training data. So a sweep

1. **plans** every trial before anything runs: one probe plan fixes the blocks, q and T (the
   same for all trials: same data, batch size and epochs); each ε gets the smallest σ whose
   run *alone* costs at most that ε (:func:`dpgov.accounting.calibrate_noise_multiplier`,
   no prior); the trials are ε × seeds;
2. **checks the whole sweep up front**: for each block, the composition (tight, the policy's
   accountant — not a sum) of what the block already spent with every trial's mechanism must
   stay within ``budget.epsilon_per_block``; otherwise it is refused (nothing charged).
   ``--dry-run`` stops here and shows that cost;
3. **runs each trial through the governed steps** (:mod:`dpgov.training.governed`: plan →
   reserve → train → commit → evaluate → track) with σ fixed to the planned one, each trial its
   own reservation, nested as a child MLflow run under the sweep's parent run, and not
   registered as a model version (a study, not a release candidate). The first trial also
   trains the non-private reference (not charged: it has no finite ε);
4. **re-verifies as it goes**: trials are reserved one by one, so before each one the sweep
   checks whether anything else was charged to its blocks since the up-front check, and if so
   whether the rest of the sweep still fits; and each reservation re-checks the budget
   atomically. If either refuses, the sweep stops, keeps what ran (each finished trial stays
   charged and logged) and reports which trials ran and what was charged.

Trials run seed-major (all ε for the first seed, then the next seed), so a sweep stopped
part-way still holds a whole curve where it can.

Modules: :mod:`~dpgov.training.sweep.plan` (1–2: arguments, trials, composed cost),
:mod:`~dpgov.training.sweep.run` (3–4), :mod:`~dpgov.training.sweep.results` (what ran),
:mod:`~dpgov.training.sweep.summary` (seeds pooled per ε), :mod:`~dpgov.training.sweep.outputs`
(CSV and JSON files) and :mod:`~dpgov.training.sweep.plot` (the tradeoff plot). MLflow's side
(the parent run and its children) is :mod:`dpgov.tracking.sweep_runs`.
"""

from dpgov.training.sweep.outputs import write_outputs
from dpgov.training.sweep.plan import (
    MAX_EPSILONS,
    MAX_SEEDS,
    BlockCost,
    SweepPlan,
    Trial,
    block_charges,
    compose_costs,
    parse_epsilons,
    parse_seeds,
    plan_sweep,
    trial_params,
)
from dpgov.training.sweep.plot import plot_tradeoff
from dpgov.training.sweep.results import ReferenceResult, SweepResult, TrialResult
from dpgov.training.sweep.run import new_sweep_id, run_sweep
from dpgov.training.sweep.summary import interval, summarise, summary_columns

__all__ = [
    "MAX_EPSILONS",
    "MAX_SEEDS",
    "BlockCost",
    "ReferenceResult",
    "SweepPlan",
    "SweepResult",
    "Trial",
    "TrialResult",
    "block_charges",
    "compose_costs",
    "interval",
    "new_sweep_id",
    "parse_epsilons",
    "parse_seeds",
    "plan_sweep",
    "plot_tradeoff",
    "run_sweep",
    "summarise",
    "summary_columns",
    "trial_params",
    "write_outputs",
]
