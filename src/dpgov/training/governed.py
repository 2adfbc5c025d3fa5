"""One governed training run: plan → reserve → train → commit → evaluate → track.

Each step is a plain function (a Prefect flow wraps each as a task); :func:`run_governed`
calls them in order. The rules they keep:

- **plan** checks everything that can be checked before budget moves (params, device, data,
  unit of privacy, σ for the target ε against what the chosen blocks already spent). Bad
  input raises :class:`UsageError` (exit 2); a budget that cannot afford the run raises
  :class:`Refused` (exit 1). Nothing is written.
- **reserve** charges the planned mechanism to every block atomically. No training without it.
- **train** runs DP-SGD. If it fails (exception, KeyboardInterrupt) the reservation is
  *released* only when no optimizer step ran, else *aborted*: it stays fully charged. A run
  killed outright (SIGKILL, power loss) leaves it pending, which also counts as spent.
- **commit** replaces the plan with the steps actually taken.
- **evaluate** scores the test split overall and per subgroup; optionally trains the
  non-private reference (same model, data, epochs; never promotable).
- **track** logs both runs to MLflow and registers them as model versions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dpgov.errors import Refused, UsageError
from dpgov.training import records

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Entry, Ledger, Reservation
    from dpgov.policy import LoadedPolicy
    from dpgov.training.evaluate import Evaluation
    from dpgov.training.params import RunParams
    from dpgov.training.trainer import SamplingPlan, TrainResult


class PreparedLike(Protocol):
    """What training reads from prepared data (``dpgov.data.PreparedData`` fits)."""

    meta: dict[str, Any]
    train: pd.DataFrame
    test: pd.DataFrame

    def features(self, split: str) -> np.ndarray: ...

    def labels(self, split: str) -> np.ndarray: ...


@dataclass
class Arrays:
    """Model inputs for one split, with the columns evaluation and accounting need."""

    x: np.ndarray
    y: np.ndarray
    patient_id: np.ndarray
    block: np.ndarray
    sensitive: pd.DataFrame


@dataclass
class RunPlan:
    params: RunParams
    policy: LoadedPolicy
    dataset: str
    data_version: str
    blocks: list[str]
    block_patients: dict[str, int]
    train: Arrays
    test: Arrays
    meta: dict[str, Any]
    sampling: SamplingPlan
    noise_multiplier: float
    mechanism: DpSgdMechanism
    epsilon_run: float
    delta: float
    accountant: str
    device: str
    grad_sample_mode: str
    calibrated: bool

    @property
    def target_epsilon(self) -> float:
        return self.params.train.target_epsilon

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_version": self.data_version,
            "blocks": self.blocks,
            "n_train_patients": len(self.train.y),
            "n_test_patients": len(self.test.y),
            "noise_multiplier": self.noise_multiplier,
            "calibrated": self.calibrated,
            "sample_rate": self.sampling.sample_rate,
            "expected_batch_size": self.sampling.expected_batch_size,
            "steps": self.sampling.steps,
            "epochs": self.sampling.epochs,
            "max_grad_norm": self.params.train.max_grad_norm,
            "target_epsilon": self.target_epsilon,
            "epsilon_run": self.epsilon_run,
            "delta": self.delta,
            "accountant": self.accountant,
            "device": self.device,
            "grad_sample_mode": self.grad_sample_mode,
            "model": self.params.model.name,
        }


@dataclass
class TrainOutcome:
    result: TrainResult
    run_id: str  # the MLflow run of the private model


@dataclass
class EvalOutcome:
    private: Evaluation
    reference: Evaluation | None = None
    reference_result: TrainResult | None = None


@dataclass
class TrackOutcome:
    run_id: str
    model_name: str
    model_version: str | None  # None when the model was not registered (register=False)
    reference_run_id: str | None
    reference_version: str | None
    facts: dict[str, Any]
    block_epsilon: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- faults (tests only)

FAULT_POINTS = ("before_reserve", "during_train", "after_train", "during_track", "after_register")


def _fault_point(name: str) -> None:
    """Test-only fault injection at a named point of a run; does nothing unless ``DPGOV_FAULT``
    names this point (never set outside tests).

    ``DPGOV_FAULT=<point>`` kills this process with SIGKILL there (no handler runs: a power
    loss). With ``DPGOV_FAULT_PAUSE=<folder>`` it instead creates ``<folder>/<point>.reached``
    and waits (up to 10 minutes) for ``<folder>/<point>.go``, so a test can cut a service at
    exactly that point. Points: ``before_reserve`` (nothing charged yet), ``during_train``
    (after the second optimizer step), ``after_train`` (trained, not committed),
    ``during_track`` (committed; run metrics logged, no model version yet), ``after_register``
    (model version registered with its facts; MLflow run not ended).
    """
    if os.environ.get("DPGOV_FAULT") != name:
        return
    pause = os.environ.get("DPGOV_FAULT_PAUSE")
    if not pause:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
        return
    import time

    (Path(pause) / f"{name}.reached").touch()
    deadline = time.monotonic() + 600
    while not (Path(pause) / f"{name}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


# --------------------------------------------------------------------------- data


def arrays(data: PreparedLike, split: str) -> Arrays:
    """Features (reshaped to [N, C, H, W] for images), labels, ids, blocks, sensitive columns."""
    meta = data.meta
    frame = data.train if split == "train" else data.test
    x = np.asarray(data.features(split), dtype=np.float32)
    if meta.get("kind") == "image":
        shape = meta.get("image_shape")
        if not shape:
            raise UsageError("meta.json: image data needs image_shape [C, H, W]")
        x = x.reshape((len(x), *[int(s) for s in shape]))
    y = np.asarray(data.labels(split))
    if len(y) and not np.isin(np.unique(y), [0, 1]).all():
        raise UsageError(f"{split} labels: expected 0/1, found {sorted(np.unique(y))[:5]}")
    pid = meta.get("patient_id", "patient_id")
    blk = meta.get("block", "block")
    sensitive = list(meta.get("sensitive") or [])
    missing = [c for c in [pid, blk, *sensitive] if c not in frame.columns]
    if missing:
        raise UsageError(f"prepared {split} split: missing columns {missing}")
    if not (len(x) == len(y) == len(frame)):
        raise UsageError(
            f"prepared {split} split: {len(x)} feature rows, {len(y)} labels, "
            f"{len(frame)} table rows"
        )
    return Arrays(
        x=x,
        y=y.astype(np.float32),
        patient_id=frame[pid].astype(str).to_numpy(),
        block=frame[blk].astype(str).to_numpy(),
        sensitive=frame[sensitive].astype(str).reset_index(drop=True),
    )


def _subset(a: Arrays, mask: np.ndarray) -> Arrays:
    return Arrays(
        x=a.x[mask],
        y=a.y[mask],
        patient_id=a.patient_id[mask],
        block=a.block[mask],
        sensitive=a.sensitive[mask].reset_index(drop=True),
    )


def load_data(path: str | Path) -> tuple[PreparedLike, str]:
    """Prepared data and its data version (the DVC md5), through :mod:`dpgov.data`."""
    from dpgov import data as data_module

    folder = Path(path)
    if not folder.exists():
        raise UsageError(
            f"train.data: prepared data folder {folder} does not exist "
            "(run `dpgov data prepare` first)"
        )
    prepared = data_module.load_prepared(folder)
    return prepared, data_version_of(prepared, folder)


def data_version_of(prepared: PreparedLike, folder: Path | None) -> str:
    version = prepared.meta.get("data_version")
    if version:
        return str(version)
    from dpgov import data as data_module

    fn = getattr(data_module, "data_version", None)
    if folder is not None and fn is not None:
        return str(fn(folder))
    raise UsageError("prepared data has no data version (meta.json data_version or DVC md5)")


# --------------------------------------------------------------------------- plan


def plan(
    params: RunParams,
    policy: LoadedPolicy,
    data: PreparedLike,
    *,
    ledger: Ledger,
    data_version: str | None = None,
) -> RunPlan:
    """Check the run and fix its mechanism; nothing is written anywhere."""
    from dpgov.accounting import DpSgdMechanism, calibrate_noise_multiplier, epsilon
    from dpgov.accounting.errors import AccountingInputError, InfeasibleBudget
    from dpgov.training.models import build_model, input_spec
    from dpgov.training.trainer import (
        check_secure_rng,
        choose_grad_sample_mode,
        resolve_device,
        sampling_plan,
    )

    cfg = params.train
    budget = policy.policy.budget
    meta = data.meta
    dataset = str(meta.get("dataset") or "")
    if not dataset:
        raise UsageError("meta.json: dataset is missing")
    version = data_version or data_version_of(data, None)
    device = resolve_device(cfg.device)
    check_secure_rng(cfg.secure_rng)
    if meta.get("kind", "tabular") == "image" and params.model.name != "cnn":
        raise UsageError(f"model.name: {params.model.name!r} cannot take image data; use cnn")

    train_all = arrays(data, "train")
    test = arrays(data, "test")
    blocks = _choose_blocks(cfg.blocks, meta, train_all, dataset, ledger, budget)
    train = _subset(train_all, np.isin(train_all.block, blocks))
    _check_unit_of_privacy(train, test)
    if len(np.unique(train.y)) < 2:
        raise UsageError(f"training data of blocks {blocks}: labels hold one class only")

    model = build_model(params.model, input_spec(meta))
    mode = choose_grad_sample_mode(cfg.grad_sample_mode, model)
    sampling = sampling_plan(n=len(train.y), batch_size=cfg.batch_size, epochs=cfg.epochs)
    if budget.delta >= 1.0 / len(train.y):
        raise UsageError(
            f"policy budget.delta: {budget.delta:g} is not below 1/n = {1 / len(train.y):.3g} "
            f"for the {len(train.y)} training patients"
        )

    registered = _registered_blocks(ledger, dataset)
    known = [b for b in blocks if b in registered]
    try:
        if cfg.noise_multiplier is not None:
            sigma = float(cfg.noise_multiplier)
            calibrated = False
        elif known:
            sigma = ledger.calibrate(
                dataset=dataset,
                blocks=known,
                target_epsilon=cfg.target_epsilon,
                sample_rate=sampling.sample_rate,
                steps=sampling.steps,
                budget=budget,
            )
            calibrated = True
        else:  # blocks not yet in the ledger: nothing spent on them
            sigma = calibrate_noise_multiplier(
                target_epsilon=cfg.target_epsilon,
                delta=budget.delta,
                sample_rate=sampling.sample_rate,
                steps=sampling.steps,
                accountant=budget.accountant,
            )
            calibrated = True
        mechanism = DpSgdMechanism(
            noise_multiplier=sigma, sample_rate=sampling.sample_rate, steps=sampling.steps
        )
        eps_run = epsilon([mechanism], delta=budget.delta, accountant=budget.accountant)
    except AccountingInputError as err:
        raise UsageError(f"train: {err}") from err
    except InfeasibleBudget as err:
        raise Refused(f"dataset {dataset!r}, blocks {', '.join(blocks)}: {err}") from err
    if eps_run > cfg.target_epsilon * (1 + 1e-9):
        raise UsageError(
            f"train.noise_multiplier: σ={sigma:g} with sample rate {sampling.sample_rate:.4g} for "
            f"{sampling.steps} steps costs ε={eps_run:.4f} at δ={budget.delta:g}, over "
            f"train.target_epsilon {cfg.target_epsilon:g}; raise σ, or lower epochs or "
            "batch_size, or leave noise_multiplier unset to calibrate it"
        )
    return RunPlan(
        params=params,
        policy=policy,
        dataset=dataset,
        data_version=version,
        blocks=blocks,
        block_patients={b: int(meta["blocks"][b]) for b in blocks},
        train=train,
        test=test,
        meta=meta,
        sampling=sampling,
        noise_multiplier=sigma,
        mechanism=mechanism,
        epsilon_run=eps_run,
        delta=budget.delta,
        accountant=budget.accountant,
        device=str(device),
        grad_sample_mode=mode,
        calibrated=calibrated,
    )


def _registered_blocks(ledger: Ledger, dataset: str) -> dict[str, Any]:
    return {b.block: b for b in ledger.blocks() if b.dataset == dataset}


def _choose_blocks(
    wanted: list[str] | None,
    meta: dict[str, Any],
    train: Arrays,
    dataset: str,
    ledger: Ledger,
    budget: Any,
) -> list[str]:
    """The named blocks, or every block of the data that is active with budget left."""
    available = list((meta.get("blocks") or {}).keys())
    if not available:
        raise UsageError("meta.json: blocks is empty: nothing to train on")
    registered = _registered_blocks(ledger, dataset)
    if wanted is not None:
        unknown = [b for b in wanted if b not in available]
        if unknown:
            raise UsageError(
                f"train.blocks: unknown block(s) {unknown} of dataset {dataset!r}; "
                f"the data holds {available}"
            )
        if len(set(wanted)) != len(wanted):
            raise UsageError(f"train.blocks: a block is named twice in {wanted}")
        retired = [b for b in wanted if b in registered and registered[b].retired]
        if retired:
            raise Refused(f"train.blocks: block(s) {retired} of dataset {dataset!r} are retired")
        chosen = list(wanted)
    else:
        chosen = []
        for b in available:
            info = registered.get(b)
            if info is None or (
                not info.retired and ledger.block_status(dataset, b, budget).remaining > 0
            ):
                chosen.append(b)
        if not chosen:
            raise Refused(f"dataset {dataset!r}: every block is retired or has no budget left")
    present = set(np.unique(train.block))
    empty = [b for b in chosen if b not in present]
    if empty:
        raise UsageError(f"train.blocks: block(s) {empty} have no rows in the training split")
    return chosen


def _check_unit_of_privacy(train: Arrays, test: Arrays) -> None:
    """Record-level DP-SGD protects a patient only if each contributes one training record."""
    ids, counts = np.unique(train.patient_id, return_counts=True)
    if (counts > 1).any():
        worst = ids[np.argmax(counts)]
        raise Refused(
            f"unit of privacy: patient {worst!r} has {counts.max()} training records; "
            "DP-SGD here protects a patient only with one record each"
        )
    overlap = np.intersect1d(ids, np.unique(test.patient_id))
    if overlap.size:
        raise UsageError(
            f"prepared data: {overlap.size} patient(s) appear in both train and test splits"
        )


# --------------------------------------------------------------------------- reserve


def reserve(p: RunPlan, *, ledger: Ledger) -> Reservation:
    """Register the blocks (idempotent) and charge the planned mechanism to all of them."""
    _fault_point("before_reserve")
    for b in p.blocks:
        ledger.add_block(
            dataset=p.dataset, block=b, patients=p.block_patients[b], data_version=p.data_version
        )
    return ledger.reserve(
        dataset=p.dataset,
        blocks=p.blocks,
        mechanism=p.mechanism,
        budget=p.policy.policy.budget,
        policy_sha256=p.policy.sha256,
        data_version=p.data_version,
        max_run_epsilon=p.target_epsilon * (1 + 1e-9),
    )


# --------------------------------------------------------------------------- train


def train(
    p: RunPlan,
    reservation: Reservation,
    *,
    ledger: Ledger,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainOutcome:
    """Open the MLflow run and train under the reservation; settle the ledger on failure.

    ``parent_run_id`` nests the MLflow run under another (a sweep); ``tags`` are added to (or
    override) the run's tags.
    """
    from dpgov.accounting import epsilon
    from dpgov.tracking import runs
    from dpgov.training.models import build_model, input_spec
    from dpgov.training.trainer import (
        StepCounter,
        check_history,
        resolve_device,
        seed_everything,
        train_private,
    )

    if reservation.mechanism != p.mechanism:
        raise UsageError("reservation does not hold this plan's mechanism: no training")
    counter = StepCounter()
    run_id: str | None = None
    try:
        run_id = runs.start_run(
            experiment=p.params.train.experiment,
            run_name=f"dp-{p.params.model.name}",
            params=records.run_params(p, reservation, private=True),
            tags={**records.run_tags(p, reservation, private=True), **(tags or {})},
            parent_run_id=parent_run_id,
        )

        def eps_so_far(steps: int) -> float:
            if steps < 1:
                return 0.0
            return epsilon([p.mechanism.with_steps(steps)], delta=p.delta, accountant=p.accountant)

        def stepped(steps: int, loss: float) -> None:
            if steps == min(2, p.sampling.steps):
                _fault_point("during_train")
            if on_step is not None:
                on_step(steps, loss)

        seed_everything(p.params.train.seed)
        model = build_model(p.params.model, input_spec(p.meta))
        result = train_private(
            model,
            p.train.x,
            p.train.y,
            plan=p.sampling,
            noise_multiplier=p.noise_multiplier,
            max_grad_norm=p.params.train.max_grad_norm,
            cfg=p.params.train,
            device=resolve_device(p.device),
            grad_sample_mode=p.grad_sample_mode,
            counter=counter,
            on_step=stepped,
            epsilon_fn=eps_so_far,
            progress=progress,
        )
        check_history(
            result.history,
            noise_multiplier=p.noise_multiplier,
            sample_rate=p.sampling.sample_rate,
            steps=result.steps,
        )
    except BaseException as err:
        _settle_failure(ledger, reservation, counter.steps, err)
        if run_id is not None:
            failed_run, why = run_id, _reason(err)
            _quiet(lambda: runs.end_run(failed_run, failed=True, reason=why))
        raise
    return TrainOutcome(result=result, run_id=run_id)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _settle_failure(
    ledger: Ledger, reservation: Reservation, steps: int, err: BaseException
) -> None:
    """Release when no step ran; otherwise abort (the reservation stays fully charged)."""
    reason = _reason(err)
    if steps == 0:
        _quiet(lambda: ledger.release(reservation.id, reason=f"no step ran: {reason}"))
    else:
        _quiet(lambda: ledger.abort(reservation.id, reason=f"after {steps} steps: {reason}"))


def _quiet(fn: Callable[[], Any]) -> None:
    """Best effort while another error propagates (a pending reservation still counts)."""
    try:
        fn()
    except Exception:  # pragma: no cover - the original error matters more
        import logging

        logging.getLogger(__name__).exception("could not settle after a failed run")


# --------------------------------------------------------------------------- commit


def commit(reservation: Reservation, outcome: TrainOutcome, *, ledger: Ledger) -> Entry:
    """Charge the steps actually taken (never more than reserved, never less than ran)."""
    from dpgov.tracking.anchor import try_record_anchor

    _fault_point("after_train")
    entry = ledger.commit(reservation.id, steps=outcome.result.steps, run_id=outcome.run_id)
    # The chain head, anchored outside the ledger database (a failure is only logged: the
    # charge is already safe, and the audit reports unanchored commits).
    try_record_anchor(entry.seq, entry.hash, ledger=ledger)
    return entry


# --------------------------------------------------------------------------- evaluate


def evaluate(p: RunPlan, outcome: TrainOutcome, *, progress: bool = False) -> EvalOutcome:
    """Score the test split; train and score the non-private reference when asked."""
    from dpgov.training.evaluate import evaluate as score
    from dpgov.training.models import build_model, input_spec
    from dpgov.training.trainer import (
        predict_scores,
        resolve_device,
        seed_everything,
        train_nonprivate,
    )

    cfg = p.params.train

    def judge(model: Any) -> Evaluation:
        return score(
            p.test.y,
            predict_scores(model, p.test.x),
            p.test.sensitive,
            threshold=cfg.threshold,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            min_group_n=cfg.min_group_n,
        )

    out = EvalOutcome(private=judge(outcome.result.model))
    if cfg.reference:
        seed_everything(cfg.seed)
        ref_model = build_model(p.params.model, input_spec(p.meta))
        ref = train_nonprivate(
            ref_model,
            p.train.x,
            p.train.y,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            cfg=cfg,
            device=resolve_device(p.device),
            progress=progress,
        )
        out.reference_result = ref
        out.reference = judge(ref.model)
    return out


# --------------------------------------------------------------------------- track


def _register(
    run_id: str,
    model: Any,
    p: RunPlan,
    facts: dict[str, Any],
    ev: Evaluation,
    *,
    register: bool = True,
) -> str | None:
    """Log the model, register a version with the tags, then its candidate facts.

    ``register=False`` logs no model and registers no version (a study, not a candidate);
    the facts and subgroup tables are still written.
    """
    from dpgov.tracking import runs

    version: str | None = None
    if register:
        ref = runs.log_model(
            run_id,
            model,
            input_example=records.input_example(p.test.x if len(p.test.x) else p.train.x),
            register_as=facts["model_name"],
            version_tags=records.version_tags(facts),
        )
        assert ref is not None
        version = facts["model_version"] = ref.version
    runs.log_json(run_id, facts, runs.CANDIDATE_FACTS)
    runs.log_text(run_id, records.subgroup_csv(ev), "subgroups.csv")
    runs.log_json(
        run_id,
        {"subgroups": ev.table(), "gaps": [g.model_dump() for g in ev.gaps]},
        "subgroups.json",
    )
    return version


def track(
    p: RunPlan,
    reservation: Reservation,
    outcome: TrainOutcome,
    commit_entry: Entry,
    evals: EvalOutcome,
    *,
    ledger: Ledger,
    register: bool = True,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrackOutcome:
    """Log both runs (private and reference) to MLflow and register their model versions.

    The ledger is already committed here; a tracking failure marks the MLflow run FAILED
    (with the reservation tag it was opened with) and propagates. ``register=False`` logs
    neither model and registers no version (sweep trials are studies, not candidates);
    ``parent_run_id`` and ``tags`` apply to the reference run this step opens.
    """
    from dpgov.tracking import runs

    try:
        return _track(
            p,
            reservation,
            outcome,
            commit_entry,
            evals,
            ledger=ledger,
            register=register,
            parent_run_id=parent_run_id,
            tags=tags,
        )
    except BaseException as err:
        why = _reason(err)
        _quiet(lambda: runs.end_run(outcome.run_id, failed=True, reason=why))
        raise


def _track(
    p: RunPlan,
    reservation: Reservation,
    outcome: TrainOutcome,
    commit_entry: Entry,
    evals: EvalOutcome,
    *,
    ledger: Ledger,
    register: bool = True,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrackOutcome:
    from dpgov.tracking import runs
    from dpgov.training.evaluate import price_of_privacy, reference_facts

    cfg = p.params.train
    model_name = cfg.model_name
    budget = p.policy.policy.budget
    block_eps = {b: ledger.block_status(p.dataset, b, budget).epsilon_spent for b in p.blocks}
    steps = outcome.result.steps
    entries = [reservation.seq, commit_entry.seq]

    ref_run_id = ref_version = None
    ref_facts = None
    if evals.reference is not None and evals.reference_result is not None:
        ref_ev, ref_res = evals.reference, evals.reference_result
        ref_run_id = runs.start_run(
            experiment=cfg.experiment,
            run_name=f"reference-{p.params.model.name}",
            params=records.run_params(p, None, private=False),
            tags={
                **records.run_tags(p, None, private=False),
                "dpgov.private_run": outcome.run_id,
                **(tags or {}),
            },
            parent_run_id=parent_run_id,
        )
        runs.log_metrics(
            ref_run_id, {**ref_ev.metrics(), "seconds_per_epoch": _mean(ref_res.epoch_seconds)}
        )
        runs.log_series(ref_run_id, "train_loss", ref_res.epoch_losses)
        facts = records.candidate_facts(
            p,
            run_id=ref_run_id,
            private=False,
            ev=ref_ev,
            model_name=model_name,
            model_version=None,
            reservation=None,
            entries=[],
            steps=None,
            eps=None,
        )
        ref_version = _register(ref_run_id, ref_res.model, p, facts, ref_ev, register=register)
        runs.end_run(ref_run_id)
        ref_facts = reference_facts(ref_run_id, ref_ev)

    run_id = outcome.run_id
    statement = records.privacy_statement(p, reservation, commit_entry, steps, block_eps)
    ev = evals.private
    metrics: dict[str, float] = {
        "epsilon": statement["epsilon"],
        "delta": p.delta,
        "seconds_per_epoch": _mean(outcome.result.epoch_seconds),
        **{f"epsilon_block.{records.metric_key(b)}": v for b, v in block_eps.items()},
        **ev.metrics(),
    }
    if evals.reference is not None:
        metrics.update({f"price.{k}": v for k, v in price_of_privacy(ev, evals.reference).items()})
        metrics["reference_auroc"] = evals.reference.auroc
    runs.log_metrics(run_id, metrics)
    _fault_point("during_track")
    runs.log_series(run_id, "train_loss", outcome.result.epoch_losses)
    runs.set_tags(
        run_id,
        {
            "dpgov.ledger_entries": records.compact_json(entries),
            "dpgov.commit": str(commit_entry.seq),
            **({"dpgov.reference_run": ref_run_id} if ref_run_id else {}),
        },
    )
    runs.log_json(run_id, statement, "privacy_statement.json")
    runs.log_text(run_id, records.statement_text(statement), "privacy_statement.txt")
    facts = records.candidate_facts(
        p,
        run_id=run_id,
        private=True,
        ev=ev,
        model_name=model_name,
        model_version=None,
        reservation=reservation,
        entries=entries,
        steps=steps,
        eps=statement["epsilon"],
        reference=ref_facts,
    )
    version = _register(run_id, outcome.result.model, p, facts, ev, register=register)
    _fault_point("after_register")
    runs.end_run(run_id)
    return TrackOutcome(
        run_id=run_id,
        model_name=model_name,
        model_version=version,
        reference_run_id=ref_run_id,
        reference_version=ref_version,
        facts=facts,
        block_epsilon=block_eps,
    )


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


# --------------------------------------------------------------------------- all of it


@dataclass
class RunSummary:
    plan: dict[str, Any]
    reservation: str
    ledger_entries: list[int]
    steps: int
    epsilon: float
    block_epsilon: dict[str, float]
    run_id: str
    model_name: str
    model_version: str | None
    reference_run_id: str | None
    reference_version: str | None
    auroc: float
    reference_auroc: float | None
    subgroups: list[dict[str, Any]]
    gaps: list[dict[str, Any]]
    reference_gaps: list[dict[str, Any]] | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def run_governed(
    params: RunParams,
    policy_path: str | Path | None = None,
    *,
    data: PreparedLike | None = None,
    data_version: str | None = None,
    ledger: Ledger | None = None,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> RunSummary:
    """plan → reserve → train → commit → evaluate → track, for one set of params."""
    import time

    from dpgov.ledger import Ledger as LedgerCls
    from dpgov.policy import load_policy

    started = time.perf_counter()
    policy = load_policy(policy_path)
    if data is None:
        from dpgov.training.params import prepared_path

        data, data_version = load_data(prepared_path(params))
    led = ledger if ledger is not None else LedgerCls.open()
    p = plan(params, policy, data, ledger=led, data_version=data_version)
    reservation = reserve(p, ledger=led)
    outcome = train(p, reservation, ledger=led, progress=progress, on_step=on_step)
    try:
        entry = commit(reservation, outcome, ledger=led)
        evals = evaluate(p, outcome, progress=progress)
    except BaseException as err:  # the ledger keeps the charge; MLflow shows the failure
        from dpgov.tracking import runs

        why = _reason(err)
        _quiet(lambda: runs.end_run(outcome.run_id, failed=True, reason=why))
        raise
    tracked = track(p, reservation, outcome, entry, evals, ledger=led)
    ref = evals.reference
    return RunSummary(
        plan=p.summary(),
        reservation=reservation.id,
        ledger_entries=[reservation.seq, entry.seq],
        steps=outcome.result.steps,
        epsilon=float(tracked.facts["epsilon"]),
        block_epsilon=tracked.block_epsilon,
        run_id=tracked.run_id,
        model_name=tracked.model_name,
        model_version=tracked.model_version,
        reference_run_id=tracked.reference_run_id,
        reference_version=tracked.reference_version,
        auroc=evals.private.auroc,
        reference_auroc=ref.auroc if ref is not None else None,
        subgroups=evals.private.table(),
        gaps=[g.model_dump() for g in evals.private.gaps],
        reference_gaps=[g.model_dump() for g in ref.gaps] if ref is not None else None,
        seconds=time.perf_counter() - started,
    )
