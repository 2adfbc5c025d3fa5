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
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgov.errors import Refused, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger
    from dpgov.policy import LoadedPolicy
    from dpgov.training.evaluate import Evaluation
    from dpgov.training.governed import PreparedLike, RunPlan
    from dpgov.training.params import RunParams

# σ of the probe plan, which only fixes blocks, q and T (it is never reserved or trained).
PROBE_NOISE_MULTIPLIER = 50.0
PROBE_TARGET_EPSILON = 1e9
MAX_SEEDS = 100
MAX_EPSILONS = 20


# --------------------------------------------------------------------------- input


def parse_epsilons(text: str) -> list[float]:
    """``"1,3,8"`` → ``[1.0, 3.0, 8.0]`` (sorted); one line naming the problem otherwise."""
    raw = (text or "").strip()
    if not raw:
        raise UsageError("--epsilons: empty list; give positive values such as 1,3,8")
    values: list[float] = []
    for i, part in enumerate(raw.split(","), start=1):
        item = part.strip()
        if not item:
            raise UsageError(f"--epsilons: item {i} of {raw!r} is empty; give a list like 1,3,8")
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"--epsilons: {item!r} is not a number (in {raw!r})") from None
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"--epsilons: every ε must be a finite number > 0, found {item!r}")
        if value in values:
            raise UsageError(f"--epsilons: ε {item} is listed twice; use --seeds for repeats")
        values.append(value)
    if len(values) > MAX_EPSILONS:
        raise UsageError(f"--epsilons: at most {MAX_EPSILONS} values, found {len(values)}")
    return sorted(values)


def parse_seeds(text: str | int) -> int:
    """The number of seeds per ε: an integer from 1 to :data:`MAX_SEEDS`."""
    try:
        n = int(str(text).strip())
    except ValueError:
        raise UsageError(f"--seeds: expected a whole number >= 1, found {text!r}") from None
    if n < 1 or n > MAX_SEEDS:
        raise UsageError(f"--seeds: must be between 1 and {MAX_SEEDS}, found {n}")
    return n


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Trial:
    """One DP training run of the sweep: its own ε target, seed and calibrated mechanism."""

    index: int  # 1-based, in the order trials run
    epsilon: float  # target ε of this run alone
    seed: int
    mechanism: DpSgdMechanism
    epsilon_run: float  # ε of the mechanism alone at the policy's δ (<= epsilon)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.index,
            "epsilon": self.epsilon,
            "seed": self.seed,
            "noise_multiplier": self.mechanism.noise_multiplier,
            "sample_rate": self.mechanism.sample_rate,
            "steps": self.mechanism.steps,
            "epsilon_run": self.epsilon_run,
        }


@dataclass(frozen=True)
class BlockCost:
    """What the sweep costs one block, every ε composed at the policy's δ."""

    block: str
    charges: int  # active charges (pending, committed, aborted) before the sweep
    spent: float  # ε the block had spent: its charges composed
    sweep: float  # ε of the sweep's trials alone, composed
    after: float  # ε after the sweep: its charges and every trial composed
    limit: float

    @property
    def fits(self) -> bool:
        return self.after <= self.limit

    @property
    def remaining_after(self) -> float:
        return max(0.0, self.limit - self.after)

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "charges": self.charges,
            "epsilon_spent": self.spent,
            "epsilon_sweep": self.sweep,
            "epsilon_after": self.after,
            "epsilon_limit": self.limit,
            "remaining_after": self.remaining_after,
            "fits": self.fits,
        }


@dataclass
class SweepPlan:
    params: RunParams
    policy: LoadedPolicy
    dataset: str
    data_version: str
    blocks: list[str]
    epsilons: list[float]
    seeds: list[int]
    trials: list[Trial]
    costs: list[BlockCost]
    prior_charges: dict[str, set[str]]  # block -> active reservation ids at the check
    delta: float
    accountant: str
    sample_rate: float
    steps: int
    epochs: int
    n_train: int
    n_test: int
    epsilon_sum: float  # the naive sum of the trials' ε (what composition improves on)

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.costs)

    def refusal(self) -> str:
        """One line: the blocks the sweep would overspend, and by how much."""
        over = [c for c in self.costs if not c.fits]
        worst = max(over, key=lambda c: c.after - c.limit)
        names = ", ".join(c.block for c in over)
        return (
            f"sweep refused: its {len(self.trials)} trials compose to ε={self.costs[0].sweep:.4f} "
            f"on their own and would bring {len(over)} block(s) of dataset {self.dataset!r} "
            f"({names}) over the limit {worst.limit:g} (worst: {worst.block} from "
            f"{worst.spent:.4f} to {worst.after:.4f}, over by {worst.after - worst.limit:.4f}); "
            "nothing was charged: use fewer ε values or seeds, or a policy with a larger "
            "budget.epsilon_per_block"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_version": self.data_version,
            "blocks": self.blocks,
            "n_train_patients": self.n_train,
            "n_test_patients": self.n_test,
            "epsilons": self.epsilons,
            "seeds": self.seeds,
            "delta": self.delta,
            "accountant": self.accountant,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "epochs": self.epochs,
            "model": self.params.model.name,
            "policy": str(self.policy.path),
            "policy_sha256": self.policy.sha256,
            "epsilon_per_block": self.policy.policy.budget.epsilon_per_block,
            "trials": [t.to_dict() for t in self.trials],
            "epsilon_sweep": self.costs[0].sweep if self.costs else 0.0,
            "epsilon_sum_of_trials": self.epsilon_sum,
            "blocks_cost": [c.to_dict() for c in self.costs],
            "fits": self.fits,
        }


def trial_params(
    params: RunParams,
    *,
    epsilon: float,
    noise_multiplier: float,
    seed: int,
    reference: bool,
    blocks: list[str] | None,
) -> RunParams:
    """The params of one trial: the base params with σ, ε, seed and blocks fixed."""
    train = params.train.model_copy(
        update={
            "target_epsilon": float(epsilon),
            "noise_multiplier": float(noise_multiplier),
            "seed": int(seed),
            "reference": reference,
            "blocks": list(blocks) if blocks is not None else None,
        }
    )
    return params.model_copy(update={"train": train})


def block_charges(
    ledger: Ledger, dataset: str, blocks: list[str]
) -> dict[str, list[tuple[str, DpSgdMechanism]]]:
    """Each block's active charges (pending, committed, aborted): (reservation id, mechanism).

    These are what the ledger composes into a block's spent ε.
    """
    from dpgov.ledger.store import ACTIVE

    wanted = set(blocks)
    out: dict[str, list[tuple[str, DpSgdMechanism]]] = {b: [] for b in blocks}
    for r in ledger.reservations():
        if r.dataset != dataset or r.status not in ACTIVE:
            continue
        for b in r.blocks:
            if b in wanted:
                out[b].append((r.id, r.mechanism))
    return out


def compose_costs(
    charges: dict[str, list[tuple[str, DpSgdMechanism]]],
    trials: list[DpSgdMechanism],
    *,
    limit: float,
    delta: float,
    accountant: str,
) -> list[BlockCost]:
    """Per block: ε spent, ε of ``trials`` alone and ε of both, each composed (not summed)."""
    from dpgov.accounting import epsilon, group

    cache: dict[Any, float] = {}

    def eps(mechs: list[DpSgdMechanism]) -> float:
        key = tuple((m, n) for m, n in group(mechs))
        if key not in cache:
            cache[key] = epsilon(mechs, delta=delta, accountant=accountant)
        return cache[key]

    alone = eps(trials)
    out = []
    for b, held in charges.items():
        prior = [m for _, m in held]
        out.append(
            BlockCost(
                block=b,
                charges=len(prior),
                spent=eps(prior),
                sweep=alone,
                after=eps(prior + trials),
                limit=limit,
            )
        )
    return out


def plan_sweep(
    params: RunParams,
    policy: LoadedPolicy,
    data: PreparedLike,
    *,
    ledger: Ledger,
    epsilons: list[float],
    seeds: int,
    data_version: str | None = None,
) -> SweepPlan:
    """Every trial's mechanism and the whole sweep's composed cost per block. Writes nothing."""
    from dpgov.accounting import (
        AccountingInputError,
        DpSgdMechanism,
        InfeasibleBudget,
        calibrate_noise_multiplier,
        epsilon,
    )
    from dpgov.training import governed

    if not epsilons:
        raise UsageError("--epsilons: empty list; give positive values such as 1,3,8")
    n_seeds = parse_seeds(seeds)
    budget = policy.policy.budget
    probe_params = trial_params(
        params,
        epsilon=PROBE_TARGET_EPSILON,
        noise_multiplier=PROBE_NOISE_MULTIPLIER,
        seed=params.train.seed,
        reference=False,
        blocks=params.train.blocks,
    )
    probe = governed.plan(probe_params, policy, data, ledger=ledger, data_version=data_version)
    q, steps = probe.sampling.sample_rate, probe.sampling.steps

    mechanisms: dict[float, tuple[DpSgdMechanism, float]] = {}
    for eps in epsilons:
        try:
            sigma = calibrate_noise_multiplier(
                target_epsilon=eps,
                delta=budget.delta,
                sample_rate=q,
                steps=steps,
                accountant=budget.accountant,
            )
            mech = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
            mechanisms[eps] = (
                mech,
                epsilon([mech], delta=budget.delta, accountant=budget.accountant),
            )
        except InfeasibleBudget as err:
            raise UsageError(
                f"--epsilons: ε={eps:g} is too small for {steps} steps at sample rate {q:.4g} "
                f"(δ={budget.delta:g}): no noise multiplier up to the calibration's limit "
                "reaches it"
            ) from err
        except AccountingInputError as err:
            raise UsageError(f"--epsilons: ε={eps:g}: {err}") from err

    base_seed = params.train.seed
    seed_list = [base_seed + i for i in range(n_seeds)]
    trials: list[Trial] = []
    for seed in seed_list:  # seed-major: a stopped sweep keeps whole curves
        for eps in epsilons:
            mech, eps_run = mechanisms[eps]
            trials.append(
                Trial(
                    index=len(trials) + 1,
                    epsilon=eps,
                    seed=seed,
                    mechanism=mech,
                    epsilon_run=eps_run,
                )
            )

    held = block_charges(ledger, probe.dataset, probe.blocks)
    costs = compose_costs(
        held,
        [t.mechanism for t in trials],
        limit=budget.epsilon_per_block,
        delta=budget.delta,
        accountant=budget.accountant,
    )
    return SweepPlan(
        params=params,
        policy=policy,
        dataset=probe.dataset,
        data_version=probe.data_version,
        blocks=list(probe.blocks),
        epsilons=list(epsilons),
        seeds=seed_list,
        trials=trials,
        costs=costs,
        prior_charges={b: {rid for rid, _ in v} for b, v in held.items()},
        delta=budget.delta,
        accountant=budget.accountant,
        sample_rate=q,
        steps=steps,
        epochs=probe.sampling.epochs,
        n_train=len(probe.train.y),
        n_test=len(probe.test.y),
        epsilon_sum=sum(t.epsilon_run for t in trials),
    )


# --------------------------------------------------------------------------- run


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
            **_flat_metrics(self.evaluation),
        }


@dataclass
class ReferenceResult:
    run_id: str
    seed: int
    evaluation: Evaluation

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seed": self.seed, **_flat_metrics(self.evaluation)}


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


TrialHook = Callable[[str, Trial], None]


def new_sweep_id() -> str:
    import uuid

    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def run_sweep(
    sp: SweepPlan,
    data: PreparedLike,
    *,
    ledger: Ledger,
    progress: Callable[[str], None] | None = None,
    on_trial: TrialHook | None = None,
    out_root: Path | None = None,
) -> SweepResult:
    """Run a checked sweep: every trial through the governed steps, one reservation each.

    Refuses (nothing charged) when ``sp`` does not fit. ``on_trial(event, trial)`` is called
    with ``"reserve"`` just before a trial's reservation and ``"done"`` after it is tracked.
    Results go to a parent MLflow run and to ``out_root/<sweep id>/`` (default
    ``$DPGOV_HOME/sweeps``).
    """
    import time

    from dpgov import config
    from dpgov.tracking import sweeps

    if not sp.fits:
        raise Refused(sp.refusal())
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    sweep_id = new_sweep_id()
    experiment = sp.params.train.experiment
    parent = sweeps.start_sweep(
        experiment=experiment,
        sweep_id=sweep_id,
        params=_parent_params(sp),
        tags=_parent_tags(sp),
    )
    result = SweepResult(sweep_id=sweep_id, parent_run_id=parent, experiment=experiment, plan=sp)
    try:
        _run_trials(sp, data, result, ledger=ledger, say=say, on_trial=on_trial)
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
        sweeps.log_sweep(
            parent,
            files=[Path(p) for p in result.files.values()],
            metrics=_parent_metrics(result),
        )
    except BaseException as err:
        from dpgov.training.governed import _quiet, _reason

        why = _reason(err)
        _quiet(lambda: sweeps.end_sweep(parent, status="FAILED", reason=why))
        raise
    if result.stopped:
        sweeps.end_sweep(parent, status="KILLED", reason=result.stopped)
    else:
        sweeps.end_sweep(parent, status="FINISHED")
    return result


def _run_trials(
    sp: SweepPlan,
    data: PreparedLike,
    result: SweepResult,
    *,
    ledger: Ledger,
    say: Callable[[str], None],
    on_trial: TrialHook | None,
) -> None:
    from dpgov.tracking import sweeps
    from dpgov.training import governed

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
        p = governed.plan(params, sp.policy, data, ledger=ledger, data_version=sp.data_version)
        _check_same(p, sp, trial)
        tags = sweeps.child_tags(result.sweep_id, trial.index)
        if result.reference is not None:
            tags["dpgov.reference_run"] = result.reference.run_id
        if on_trial:
            on_trial("reserve", trial)
        try:
            reservation = governed.reserve(p, ledger=ledger)
        except Refused as err:
            result.stopped = f"sweep stopped at {label}: its reservation was refused: {err}"
            return
        ours.add(reservation.id)
        say(f"{label}: reserved {reservation.id} (σ={p.noise_multiplier:.4g}), training")
        t0 = _now()
        outcome = governed.train(
            p, reservation, ledger=ledger, parent_run_id=result.parent_run_id, tags=tags
        )
        try:
            entry = governed.commit(reservation, outcome, ledger=ledger)
            evals = governed.evaluate(p, outcome)
        except BaseException as err:  # the ledger keeps the charge; MLflow shows the failure
            from dpgov.tracking import runs

            run_id, failed = outcome.run_id, governed._reason(err)
            governed._quiet(lambda: runs.end_run(run_id, failed=True, reason=failed))  # noqa: B023
            raise
        if first:
            ref_ev = evals.reference
        elif ref_ev is not None:  # price of privacy against the sweep's one reference
            evals.reference = ref_ev
        tracked = governed.track(
            p,
            reservation,
            outcome,
            entry,
            evals,
            ledger=ledger,
            register=False,
            parent_run_id=result.parent_run_id,
            tags=sweeps.child_tags(result.sweep_id, None),
        )
        if first and tracked.reference_run_id and ref_ev is not None:
            result.reference = ReferenceResult(
                run_id=tracked.reference_run_id, seed=trial.seed, evaluation=ref_ev
            )
        done = TrialResult(
            trial=trial,
            run_id=outcome.run_id,
            reservation=reservation.id,
            ledger_entries=[reservation.seq, entry.seq],
            steps=outcome.result.steps,
            epsilon_spent=float(tracked.facts["epsilon"]),
            evaluation=evals.private,
            seconds=_now() - t0,
        )
        result.trials.append(done)
        say(
            f"{label}: committed, ε={done.epsilon_spent:.3f}, AUROC {evals.private.auroc:.3f}"
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
    )
    over = [c for c in costs if not c.fits]
    if not over:
        return None
    worst = max(over, key=lambda c: c.after - c.limit)
    others = sorted({rid for c in over for rid in foreign[c.block]})
    return (
        f"{len(others)} charge(s) made outside the sweep since its check "
        f"({', '.join(others)}) leave block {worst.block!r} ε={worst.spent:.4f}; the "
        f"{len(remaining)} trial(s) left would bring it to ε={worst.after:.4f}, over the "
        f"limit {worst.limit:g}"
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
    import json

    from dpgov import config

    return {
        "dpgov.status": "sweep",
        "dpgov.dataset": sp.dataset,
        "dpgov.blocks": json.dumps(sp.blocks, separators=(",", ":")),
        "dpgov.data_version": sp.data_version,
        "dpgov.policy_sha256": sp.policy.sha256,
        "dpgov.author": config.actor(),
    }


def _parent_metrics(result: SweepResult) -> dict[str, float]:
    from dpgov.training.records import metric_key

    sp = result.plan
    out: dict[str, float] = {
        "sweep.trials_run": float(len(result.trials)),
        "sweep.trials_planned": float(len(sp.trials)),
        "sweep.epsilon_planned": sp.costs[0].sweep if sp.costs else 0.0,
        "sweep.epsilon_sum_of_trials": sp.epsilon_sum,
    }
    for b, v in result.block_epsilon.items():
        out[f"sweep.epsilon_block.{metric_key(b)}"] = v
    return out


# --------------------------------------------------------------------------- results


def _flat_metrics(ev: Evaluation) -> dict[str, Any]:
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


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def interval(points: list[Any], los: list[Any], his: list[Any]) -> dict[str, Any]:
    """Mean over seeds; the seeds' bootstrap 95% bounds averaged; sd over seeds (n >= 2)."""
    pts, lo, hi = _finite(points), _finite(los), _finite(his)
    return {
        "mean": statistics.fmean(pts) if pts else None,
        "lo": statistics.fmean(lo) if lo and len(lo) == len(pts) else None,
        "hi": statistics.fmean(hi) if hi and len(hi) == len(pts) else None,
        "sd": statistics.stdev(pts) if len(pts) >= 2 else None,
        "n": len(pts),
    }


def _summary_row(
    label: str, epsilon: float | None, evs: list[Evaluation], extra: dict[str, Any]
) -> dict[str, Any]:
    first = evs[0]
    attributes = list(dict.fromkeys(s.attribute for s in first.subgroups))
    ordered = sorted(
        first.subgroups, key=lambda s: (attributes.index(s.attribute), _group_order(s.group))
    )
    subgroups = []
    for s in ordered:
        same = [
            next(x for x in ev.subgroups if (x.attribute, x.group) == (s.attribute, s.group))
            for ev in evs
        ]
        subgroups.append(
            {
                "attribute": s.attribute,
                "group": s.group,
                "n": s.n,
                "positives": s.positives,
                "auroc": interval(
                    [x.auroc for x in same], [x.auroc_lo for x in same], [x.auroc_hi for x in same]
                ),
                "fnr": interval(
                    [x.fnr for x in same], [x.fnr_lo for x in same], [x.fnr_hi for x in same]
                ),
            }
        )
    gaps = []
    for g in first.gaps:
        same_g = [
            next(x for x in ev.gaps if (x.attribute, x.metric) == (g.attribute, g.metric))
            for ev in evs
        ]
        gaps.append(
            {
                "attribute": g.attribute,
                "metric": g.metric,
                "groups_judged": min(x.groups_judged for x in same_g),
                "gap": interval(
                    [x.gap for x in same_g], [x.lo for x in same_g], [x.hi for x in same_g]
                ),
            }
        )
    return {
        "variant": label,
        "epsilon": epsilon,
        **extra,
        "seeds": len(evs),
        "auroc": interval(
            [e.auroc for e in evs], [e.auroc_lo for e in evs], [e.auroc_hi for e in evs]
        ),
        "calibration_error": interval([e.calibration_error for e in evs], [], []),
        "accuracy": interval([e.accuracy for e in evs], [], []),
        "brier": interval([e.brier for e in evs], [], []),
        "subgroups": subgroups,
        "gaps": gaps,
    }


def summarise(trials: list[TrialResult], reference: ReferenceResult | None) -> list[dict[str, Any]]:
    """One row per ε (seeds pooled) in increasing ε, then the non-private reference."""
    rows = []
    for eps in sorted({t.trial.epsilon for t in trials}):
        mine = [t for t in trials if t.trial.epsilon == eps]
        rows.append(
            _summary_row(
                f"ε={eps:g}",
                eps,
                [t.evaluation for t in mine],
                {
                    "epsilon_spent": max(t.epsilon_spent for t in mine),
                    "noise_multiplier": mine[0].trial.mechanism.noise_multiplier,
                    "runs": [t.run_id for t in mine],
                },
            )
        )
    if reference is not None:
        rows.append(
            _summary_row(
                "non-private",
                None,
                [reference.evaluation],
                {"epsilon_spent": None, "noise_multiplier": None, "runs": [reference.run_id]},
            )
        )
    return rows


def summary_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A summary row flattened for CSV: ``name``, ``name_lo``, ``name_hi``, ``name_sd``."""
    out: dict[str, Any] = {
        "variant": row["variant"],
        "epsilon": row["epsilon"],
        "epsilon_spent": row["epsilon_spent"],
        "noise_multiplier": row["noise_multiplier"],
        "seeds": row["seeds"],
    }

    def put(name: str, iv: dict[str, Any]) -> None:
        out[name] = iv["mean"]
        out[f"{name}_lo"], out[f"{name}_hi"], out[f"{name}_sd"] = iv["lo"], iv["hi"], iv["sd"]

    for key in ("auroc", "calibration_error", "accuracy", "brier"):
        put(key, row[key])
    for s in row["subgroups"]:
        put(f"subgroup_auroc.{s['attribute']}.{s['group']}", s["auroc"])
    for g in row["gaps"]:
        put(f"gap_{g['metric']}.{g['attribute']}", g["gap"])
    return out


def write_outputs(result: SweepResult, folder: Path) -> dict[str, str]:
    """``summary.csv``, ``trials.csv``, ``sweep.json`` and ``tradeoff.png`` in ``folder``."""
    import json

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


def json_safe(obj: Any) -> Any:
    """NaN → null and ±inf → "inf"/"-inf", so the JSON is standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- plot


def _group_order(group: str) -> tuple[int, str]:
    """Bands such as ``<60`` before ``60-69``; otherwise alphabetical."""
    return (0 if group.startswith("<") else 1, group)


def plot_tradeoff(result: SweepResult, path: Path) -> Path:
    """AUROC, each subgroup's AUROC and the gaps against ε (log scale), with intervals.

    Points are the mean over seeds, bars the seeds' bootstrap 95% intervals averaged, small
    dots the single seeds; the non-private reference is a horizontal line (its interval a band).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in result.summary if r["epsilon"] is not None]
    ref = next((r for r in result.summary if r["epsilon"] is None), None)
    attributes = list(dict.fromkeys(s["attribute"] for s in result.summary[0]["subgroups"]))
    panels = 2 + len(attributes)
    ncols = 2
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(6.0 * ncols, 4.3 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [grid[i // ncols][i % ncols] for i in range(nrows * ncols)]
    for spare in axes[panels:]:
        spare.set_visible(False)
    axes = axes[:panels]
    xs = [r["epsilon"] for r in rows]
    colors = [f"C{i}" for i in range(10)]

    def errorbar(ax: Any, ivs: list[dict[str, Any]], color: str, label: str, shift: float) -> None:
        """Means joined by a line; each interval a vertical segment (it need not contain the
        mean: a gap's bootstrap interval is biased upward, and averaged bounds can miss it)."""
        x = [v * shift for v in xs]
        y = [iv["mean"] if iv["mean"] is not None else math.nan for iv in ivs]
        ax.plot(x, y, marker="o", color=color, label=label)
        for xi, iv in zip(x, ivs, strict=True):
            if iv["lo"] is not None and iv["hi"] is not None:
                ax.vlines(xi, iv["lo"], iv["hi"], color=color, linewidth=1.2)
                ax.plot([xi, xi], [iv["lo"], iv["hi"]], "_", color=color, markersize=6)

    def reference_line(
        ax: Any, iv: dict[str, Any] | None, color: str, label: str | None, band: bool
    ) -> None:
        if iv is None or iv["mean"] is None:
            return
        ax.axhline(iv["mean"], color=color, linestyle="--", linewidth=1, label=label)
        if band and iv["lo"] is not None and iv["hi"] is not None:
            ax.axhspan(iv["lo"], iv["hi"], color=color, alpha=0.08)

    def style(ax: Any, title: str, ylabel: str) -> None:
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(f"ε per trial (δ = {result.plan.delta:g})")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")

    # 1. utility
    ax = axes[0]
    errorbar(ax, [r["auroc"] for r in rows], "C0", "DP (mean of seeds)", 1.0)
    for t in result.trials:
        ax.plot(t.trial.epsilon, t.evaluation.auroc, ".", color="C0", alpha=0.35)
    reference_line(ax, ref["auroc"] if ref else None, "k", "non-private reference", True)
    style(ax, "Utility (test AUROC)", "AUROC")

    # 2. subgroups, one panel per sensitive attribute
    for k, attribute in enumerate(attributes, start=1):
        ax = axes[k]
        groups = sorted(
            (s["group"] for s in rows[0]["subgroups"] if s["attribute"] == attribute),
            key=_group_order,
        )
        for j, g in enumerate(groups):
            color = colors[j % len(colors)]
            ivs = [
                next(
                    s["auroc"]
                    for s in r["subgroups"]
                    if s["attribute"] == attribute and s["group"] == g
                )
                for r in rows
            ]
            shift = 1.0 + 0.03 * (j - (len(groups) - 1) / 2)
            errorbar(ax, ivs, color, f"{g}", shift)
            if ref is not None:
                rs = next(
                    s for s in ref["subgroups"] if s["attribute"] == attribute and s["group"] == g
                )
                reference_line(ax, rs["auroc"], color, None, False)
        style(ax, f"Subgroup AUROC by {attribute} (dashed: reference)", "AUROC")

    # 3. gaps
    ax = axes[-1]
    gap_keys = [(g["attribute"], g["metric"]) for g in rows[0]["gaps"]]
    for j, (attribute, metric) in enumerate(gap_keys):
        color = colors[j % len(colors)]
        ivs = [
            next(
                g["gap"] for g in r["gaps"] if (g["attribute"], g["metric"]) == (attribute, metric)
            )
            for r in rows
        ]
        shift = 1.0 + 0.03 * (j - (len(gap_keys) - 1) / 2)
        errorbar(ax, ivs, color, f"{attribute} {metric.upper()} gap", shift)
        if ref is not None:
            rg = next(
                g for g in ref["gaps"] if (g["attribute"], g["metric"]) == (attribute, metric)
            )
            ax.axhline(rg["gap"]["mean"], color=color, linestyle="--", linewidth=1)
    style(ax, "Subgroup gaps (max − min; dashed: reference)", "gap")

    fig.suptitle(
        f"Privacy–utility–fairness tradeoff: {result.plan.dataset}, "
        f"{len(result.plan.seeds)} seed(s) per ε, sweep {result.sweep_id}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
