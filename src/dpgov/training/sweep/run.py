"""Running a checked sweep: every trial through the governed steps, one reservation each.

Refuses up front when the plan does not fit; re-checks before each trial whether charges made
outside the sweep since its check leave room for the rest, and stops (keeping what ran) when
they do not. The parent MLflow run holds the sweep's parameters, metrics and files.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from dpgov import config
from dpgov.contracts import (
    STATUS_SWEEP,
    TAG_AUTHOR,
    TAG_BLOCKS,
    TAG_DATA_VERSION,
    TAG_DATASET,
    TAG_POLICY_SHA256,
    TAG_REFERENCE_RUN,
    TAG_STATUS,
    block_metric_key,
    compact_json,
    show_spent,
)
from dpgov.errors import Refused
from dpgov.gate.noise import refuse_reproducible_noise
from dpgov.tracking import sweep_runs
from dpgov.training.governed import RunOptions, StepRunner, call_step, run_governed, validate_for
from dpgov.training.settle import quiet, reason
from dpgov.training.sweep.outputs import write_outputs
from dpgov.training.sweep.plan import (
    SweepPlan,
    Trial,
    block_charges,
    compose_costs,
    trial_params,
)
from dpgov.training.sweep.results import ReferenceResult, SweepResult, TrialResult
from dpgov.training.sweep.summary import summarise

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Ledger, Reservation
    from dpgov.training.evaluate import Evaluation
    from dpgov.training.planning import RunPlan
    from dpgov.training.steps import EvalOutcome


TrialHook = Callable[[str, Trial], None]
T = TypeVar("T")


def new_sweep_id() -> str:
    import uuid

    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def run_sweep(
    sp: SweepPlan,
    *,
    ledger: Ledger,
    progress: Callable[[str], None] | None = None,
    on_trial: TrialHook | None = None,
    out_root: Path | None = None,
    validation_out: str | None = None,
) -> SweepResult:
    """Run a checked sweep: every trial is one governed run (validation on, gate and
    registration off), one reservation each.

    Refuses (nothing charged) when ``sp`` does not fit or its data fails validation (before
    the parent run opens). The trials are recorded as one committed schedule first
    (``schedule_committed``), so that they may run under ``budget.composition: fixed``.
    ``on_trial(event, trial)`` is called with ``"reserve"`` just before a trial's reservation
    and ``"done"`` after it is tracked.
    Results go to a parent MLflow run and to ``out_root/<sweep id>/`` (default
    ``$DPGOV_HOME/sweeps``).
    """
    import time

    if not sp.fits:
        raise Refused(sp.refusal())
    # before the schedule is committed: a sweep the policy's gate would refuse records nothing
    refuse_reproducible_noise(
        sp.policy.policy, reproducible=sp.params.train.reproducible_noise, where="sweep"
    )
    validate_for(sp.params, sp.policy, validation_out=validation_out)
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    sweep_id = new_sweep_id()
    # the trials are one schedule committed in advance (dpgov.ledger.schedules): under
    # budget.composition fixed, only runs of a committed schedule may be reserved
    ledger.plan_schedule(
        dataset=sp.dataset,
        blocks=sp.blocks,
        runs=[t.mechanism for t in sp.trials],
        budget=sp.policy.policy.budget,
        purpose=f"sweep {sweep_id}",
        new_blocks=True,  # the first trial registers blocks the ledger does not know yet
    )
    experiment = sp.params.train.experiment
    parent = sweep_runs.start_sweep(
        experiment=experiment,
        sweep_id=sweep_id,
        params=_parent_params(sp),
        tags=_parent_tags(sp),
    )
    result = SweepResult(sweep_id=sweep_id, parent_run_id=parent, experiment=experiment, plan=sp)
    try:
        _run_trials(
            sp, result, ledger=ledger, say=say, on_trial=on_trial, validation_out=validation_out
        )
        budget = sp.policy.policy.budget
        registered = {x.block for x in ledger.blocks(sp.dataset)}
        result.block_epsilon = {
            b: ledger.block_status(sp.dataset, b, budget).epsilon_spent
            for b in sp.blocks
            if b in registered
        }
        result.summary = summarise(result.trials, result.reference)
        result.seconds = time.perf_counter() - started
        folder = (out_root or (config.home() / "sweeps")) / sweep_id
        result.folder = folder
        result.files = write_outputs(result, folder)
        sweep_runs.log_sweep(
            parent,
            files=[Path(p) for p in result.files.values()],
            metrics=_parent_metrics(result),
        )
    except BaseException as err:
        why = reason(err)
        quiet(lambda: sweep_runs.end_sweep(parent, status="FAILED", reason=why))
        raise
    if result.stopped:
        sweep_runs.end_sweep(parent, status="KILLED", reason=result.stopped)
    else:
        sweep_runs.end_sweep(parent, status="FINISHED")
    return result


class _Stop(Exception):
    """A trial's reservation was refused: the sweep stops, keeping what ran."""


def _trial_runner(
    sp: SweepPlan,
    trial: Trial,
    *,
    label: str,
    first: bool,
    reference: Evaluation | None,
    on_trial: TrialHook | None,
    say: Callable[[str], None],
) -> StepRunner:
    """The plain step runner, plus what a sweep trial adds around three steps: the plan must be
    what the sweep's check composed, a refused reservation stops the sweep, and the
    evaluation is priced against the sweep's one reference."""

    def step(name: str, fn: Callable[..., T], /, *args: Any, retry: bool = False, **kw: Any) -> T:
        if name == "reserve":
            if on_trial:
                on_trial("reserve", trial)
            try:
                made = call_step(name, fn, *args, **kw)
            except Refused as err:
                raise _Stop(str(err)) from err
            sigma = trial.mechanism.noise_multiplier
            say(f"{label}: reserved {cast('Reservation', made).id} (σ={sigma:.4g}), training")
            return made
        out = call_step(name, fn, *args, **kw)
        if name == "plan":
            _check_same(cast("RunPlan", out), sp, trial)
        elif name == "evaluate" and not first and reference is not None:
            cast("EvalOutcome", out).reference = reference
        return out

    return step


def _run_trials(
    sp: SweepPlan,
    result: SweepResult,
    *,
    ledger: Ledger,
    say: Callable[[str], None],
    on_trial: TrialHook | None,
    validation_out: str | None,
) -> None:
    ours: set[str] = set()
    ref_ev: Evaluation | None = None
    total = len(sp.trials)
    for trial in sp.trials:
        label = f"trial {trial.index}/{total} (ε={trial.epsilon:g}, seed {trial.seed})"
        why = _recheck(sp, trial, ledger=ledger, ours=ours)
        if why:
            result.stopped = f"sweep stopped before {label}: {why}"
            return
        first = trial.index == 1
        params = trial_params(
            sp.params,
            epsilon=trial.epsilon,
            noise_multiplier=trial.mechanism.noise_multiplier,
            seed=trial.seed,
            reference=first,
            blocks=sp.blocks,
        )
        train_tags = sweep_runs.child_tags(result.sweep_id, trial.index)
        if result.reference is not None:
            train_tags[TAG_REFERENCE_RUN] = result.reference.run_id
        options = RunOptions(
            gate=False,
            register=False,
            validation_out=validation_out,
            parent_run_id=result.parent_run_id,
            train_tags=train_tags,
            reference_tags=sweep_runs.child_tags(result.sweep_id, None),
        )
        t0 = _now()
        step = _trial_runner(
            sp, trial, label=label, first=first, reference=ref_ev, on_trial=on_trial, say=say
        )
        try:
            run = run_governed(params, sp.policy, ledger=ledger, options=options, step=step)
        except _Stop as err:
            result.stopped = f"sweep stopped at {label}: its reservation was refused: {err}"
            return
        ours.add(run.reservation)
        if first:
            ref_ev = run.reference_evaluation
            if run.reference_run_id and ref_ev is not None:
                result.reference = ReferenceResult(
                    run_id=run.reference_run_id, seed=trial.seed, evaluation=ref_ev
                )
        assert run.evaluation is not None
        done = TrialResult(
            trial=trial,
            run_id=run.run_id,
            reservation=run.reservation,
            ledger_entries=list(run.ledger_entries),
            steps=run.steps,
            epsilon_spent=run.epsilon,
            evaluation=run.evaluation,
            seconds=_now() - t0,
        )
        result.trials.append(done)
        say(
            f"{label}: committed, ε={done.epsilon_spent:.3f}, AUROC {run.evaluation.auroc:.3f}"
            + (f" (reference {ref_ev.auroc:.3f})" if ref_ev is not None else "")
        )
        if on_trial:
            on_trial("done", trial)


def _now() -> float:
    import time

    return time.perf_counter()


def _recheck(sp: SweepPlan, trial: Trial, *, ledger: Ledger, ours: set[str]) -> str | None:
    """Why the rest of the sweep no longer fits, or None.

    Cheap when nothing else was charged to the sweep's blocks since the up-front check (the
    usual case); otherwise the blocks' charges now are composed with the trials still to run.
    """
    held = block_charges(ledger, sp.dataset, sp.blocks)
    foreign = {
        b: {rid for rid, _ in v} - sp.prior_charges.get(b, set()) - ours for b, v in held.items()
    }
    if not any(foreign.values()):
        return None
    remaining = [t.mechanism for t in sp.trials[trial.index - 1 :]]
    budget = sp.policy.policy.budget
    costs = compose_costs(
        held,
        remaining,
        limit=budget.epsilon_per_block,
        delta=budget.delta,
        accountant=budget.accountant,
        composition=budget.mode_for(sp.dataset),
        orders=budget.orders,
    )
    over = [c for c in costs if not c.fits]
    if not over:
        return None
    worst = max(over, key=lambda c: c.after - c.limit)
    others = sorted({rid for c in over for rid in foreign[c.block]})
    return (
        f"{len(others)} charge(s) made outside the sweep since its check "
        f"({', '.join(others)}) leave block {worst.block!r} ε={show_spent(worst.spent, 4)}; "
        f"the {len(remaining)} trial(s) left would bring it to ε={show_spent(worst.after, 4)}, "
        f"over the limit {worst.limit:g}"
    )


def _check_same(p: RunPlan, sp: SweepPlan, trial: Trial) -> None:
    """Each trial must be exactly what the up-front check composed (same blocks, q, T, σ)."""
    if p.mechanism != trial.mechanism or list(p.blocks) != sp.blocks or p.dataset != sp.dataset:
        raise Refused(
            f"trial {trial.index}: planned {p.mechanism} on {p.dataset} {p.blocks}, but the "
            f"sweep's check composed {trial.mechanism} on {sp.dataset} {sp.blocks} (the data "
            "changed during the sweep?): stopped before reserving it"
        )


def _parent_params(sp: SweepPlan) -> dict[str, Any]:
    cfg = sp.params.train
    return {
        "epsilons": sp.epsilons,
        "seeds": sp.seeds,
        "n_trials": len(sp.trials),
        "noise_multipliers": {
            f"{e:g}": next(t.mechanism.noise_multiplier for t in sp.trials if t.epsilon == e)
            for e in sp.epsilons
        },
        "dataset": sp.dataset,
        "blocks": sp.blocks,
        "n_train": sp.n_train,
        "model": sp.params.model.name,
        "epochs": sp.epochs,
        "batch_size": cfg.batch_size,
        "sample_rate": sp.sample_rate,
        "steps_per_trial": sp.steps,
        "max_grad_norm": cfg.max_grad_norm,
        "accountant": sp.accountant,
        "delta": sp.delta,
        "epsilon_per_block": sp.policy.policy.budget.epsilon_per_block,
        "n_boot": cfg.n_boot,
        "min_group_n": cfg.min_group_n,
    }


def _parent_tags(sp: SweepPlan) -> dict[str, str]:
    return {
        TAG_STATUS: STATUS_SWEEP,
        TAG_DATASET: sp.dataset,
        TAG_BLOCKS: compact_json(sp.blocks),
        TAG_DATA_VERSION: sp.data_version,
        TAG_POLICY_SHA256: sp.policy.sha256,
        TAG_AUTHOR: config.actor(),
    }


def _parent_metrics(result: SweepResult) -> dict[str, float]:
    sp = result.plan
    out: dict[str, float] = {
        "sweep.trials_run": float(len(result.trials)),
        "sweep.trials_planned": float(len(sp.trials)),
        "sweep.epsilon_planned": sp.costs[0].sweep if sp.costs else 0.0,
        "sweep.epsilon_sum_of_trials": sp.epsilon_sum,
    }
    for b, v in result.block_epsilon.items():
        out[f"sweep.{block_metric_key(b)}"] = v
    return out
