"""The steps of a governed run after the plan: reserve → train → commit → evaluate.

- **reserve** charges the planned mechanism to every block atomically. No training without it.
  Under ``release.require_empirical_audit`` **reserve_audit** then charges it once more for
  the candidate's empirical audit (:mod:`dpgov.training.prepaid_audit`): both or neither.
- **train** runs DP-SGD under the reservation; on failure it settles the ledger
  (:mod:`dpgov.training.settle`) and marks the MLflow run failed.
- **commit** replaces the plan with the steps actually taken (never less than ran) and anchors
  the chain head in the tracking store.
- **evaluate** scores the test split overall and per subgroup; optionally trains the
  non-private reference (same model, data, epochs; never registered nor stored, only its
  metrics), unless the policy forbids it (``release.allow_reference: false``).

A run asking for reproducible noise (``train.reproducible_noise``) under a policy that would
not release it is refused (exit 1) before anything is registered or charged.

:func:`dpgov.training.governed.run_governed` calls them in order; tests call them one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpgov.accounting import epsilon
from dpgov.contracts import EPSILON_TOLERANCE
from dpgov.errors import UsageError
from dpgov.gate.noise import refuse_reproducible_noise
from dpgov.gate.subgroups import rule_of
from dpgov.tracking import runs
from dpgov.tracking.anchor import try_record_anchor
from dpgov.training import prepaid_audit, private_eval, records
from dpgov.training.distributed import train_patient_level_distributed
from dpgov.training.evaluate import Evaluation, from_release, resolve_threshold
from dpgov.training.evaluate import evaluate as score
from dpgov.training.faults import fault_point
from dpgov.training.models import build_model, input_spec
from dpgov.training.patient_level import train_patient_level
from dpgov.training.settle import end_failed_run, settle_reservation
from dpgov.training.trainer import (
    StepCounter,
    check_history,
    predict_scores,
    resolve_device,
    seed_everything,
    train_nonprivate,
    train_private,
)

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.gate.dp_facts import PrivateEvaluation
    from dpgov.ledger import Entry, Ledger, Reservation
    from dpgov.training.planning import RunPlan
    from dpgov.training.trainer import TrainResult


@dataclass
class TrainOutcome:
    result: TrainResult
    run_id: str  # the MLflow run of the private model


@dataclass
class EvalOutcome:
    private: Evaluation
    reference: Evaluation | None = None
    reference_result: TrainResult | None = None
    # the DP-evaluated release both evaluations come from (evaluation.private), and the η per
    # check of the intervals recorded with them (dpgov.training.private_eval.recorded_eta)
    release: PrivateEvaluation | None = None
    eta_check: float | None = None


def reserve(p: RunPlan, *, ledger: Ledger) -> Reservation:
    """Register the blocks (idempotent) and charge the planned mechanism to all of them."""
    refuse_reproducible_noise(
        p.policy.policy, reproducible=p.params.train.reproducible_noise, where="run"
    )
    fault_point("before_reserve")
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
        max_run_epsilon=p.target_epsilon * (1 + EPSILON_TOLERANCE),
    )


def reserve_audit(p: RunPlan, candidate: Reservation, *, ledger: Ledger) -> Reservation:
    """Under ``release.require_empirical_audit`` (``p.audit_prepaid``), right after
    :func:`reserve`: charge the candidate's mechanism again to its blocks for its empirical
    audit (:mod:`dpgov.training.prepaid_audit`); refused, the candidate's reservation is
    released, so nothing stays charged."""
    if not p.audit_prepaid:
        raise UsageError("this run's policy does not ask for an empirical audit")
    return prepaid_audit.reserve_audit(p, candidate, ledger=ledger)


def reserve_evaluation(p: RunPlan, *, ledger: Ledger) -> Reservation:
    """Charge the planned DP-evaluated release to the test blocks, before training
    (:func:`dpgov.training.private_eval.reserve_evaluation`; refused with nothing charged
    when they cannot afford it)."""
    if p.evaluation is None:
        raise UsageError("this run's policy does not ask for a DP-evaluated release")
    return private_eval.reserve_evaluation(
        p.evaluation,
        p.test,
        ledger=ledger,
        dataset=p.dataset,
        budget=p.policy.policy.budget,
        policy_sha256=p.policy.sha256,
        data_version=p.data_version,
    )


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
                fault_point("during_train")
            if on_step is not None:
                on_step(steps, loss)

        seed_everything(p.params.train.seed)
        model = build_model(
            p.params.model,
            input_spec(p.meta),
            allowed_factories=p.policy.policy.release.allowed_model_factories,
        )
        if p.params.train.world_size > 1:  # DPDDP on this node, patients sharded by rank
            result = _train_distributed(p, model, counter)
        elif p.patient_level:  # several records per patient: sample and clip per patient
            result = train_patient_level(
                model,
                p.train.x,
                p.train.y,
                p.train.patient_id,
                plan=p.sampling,
                noise_multiplier=p.noise_multiplier,
                max_grad_norm=p.params.train.max_grad_norm,
                max_images_per_patient_step=p.params.train.max_images_per_patient_step,
                cfg=p.params.train,
                device=resolve_device(p.device),
                counter=counter,
                on_step=stepped,
                epsilon_fn=eps_so_far,
                progress=progress,
            )
        else:
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
        settle_reservation(ledger, reservation, counter.steps, err)
        end_failed_run(run_id, err)
        raise
    return TrainOutcome(result=result, run_id=run_id)


def _train_distributed(p: RunPlan, model: Any, counter: StepCounter) -> Any:
    """``train.world_size`` processes (dpgov.training.distributed): per-patient clipping, which
    with one record per patient is per-record clipping; the plan's (σ, q, T) is unchanged."""
    cfg = p.params.train
    if p.grad_sample_mode != "hooks":
        raise UsageError(
            f"train.world_size: {cfg.world_size} processes clip with hooks, but the plan "
            f"chose {p.grad_sample_mode!r}; set train.grad_sample_mode: hooks"
        )
    device = resolve_device(p.device)
    result, _ranks = train_patient_level_distributed(
        model,
        p.train.x,
        p.train.y,
        p.train.patient_id,
        plan=p.sampling,
        noise_multiplier=p.noise_multiplier,
        max_grad_norm=cfg.max_grad_norm,
        max_images_per_patient_step=cfg.max_images_per_patient_step,
        cfg=cfg,
        world_size=cfg.world_size,
        backend="nccl" if device.type == "cuda" else "gloo",
        counter=counter,
    )
    return result


def commit(reservation: Reservation, outcome: TrainOutcome, *, ledger: Ledger) -> Entry:
    """Charge the steps actually taken (never more than reserved, never less than ran)."""
    fault_point("after_train")
    entry = ledger.commit(reservation.id, steps=outcome.result.steps, run_id=outcome.run_id)
    # The chain head, anchored outside the ledger database (a failure is only logged: the
    # charge is already safe, and the audit reports unanchored commits).
    try_record_anchor(entry.seq, entry.hash, ledger=ledger)
    return entry


def evaluate(
    p: RunPlan,
    outcome: TrainOutcome,
    *,
    progress: bool = False,
    ledger: Ledger | None = None,
    evaluation_reservation: Reservation | None = None,
) -> EvalOutcome:
    """Score the test split; train and score the non-private reference when asked
    (``train.reference``) and the policy allows it (``release.allow_reference``).

    The threshold comes from the validation split (never the test split). With a planned
    DP-evaluated release (``p.evaluation``), both models are scored from one release drawn
    here, once, under ``evaluation_reservation`` (committed on ``ledger``): no exact test
    metric is computed."""
    cfg = p.params.train
    rule = rule_of(p.policy.policy.fairness)  # the gate's subgroup rule, for both models
    cut = run_threshold(p)

    def judge(model: Any) -> Evaluation:
        return score(
            p.test.y,
            predict_scores(model, p.test.x),
            p.test.sensitive,
            threshold=cut,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            min_group_n=rule.min_size,
            min_group_positives=rule.min_positives,
        )

    private = p.evaluation is not None
    if private and (ledger is None or evaluation_reservation is None):
        raise UsageError("a DP-evaluated release needs its reservation and the ledger")
    out = EvalOutcome(private=judge(outcome.result.model) if not private else _pending())
    if cfg.reference and p.policy.policy.release.allow_reference:
        seed_everything(cfg.seed)
        ref_model = build_model(
            p.params.model,
            input_spec(p.meta),
            allowed_factories=p.policy.policy.release.allowed_model_factories,
        )
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
        if not private:
            out.reference = judge(ref.model)
    if private:
        assert p.evaluation is not None and ledger is not None
        assert evaluation_reservation is not None
        models = {private_eval.CANDIDATE: outcome.result.model}
        if out.reference_result is not None:
            models[private_eval.REFERENCE] = out.reference_result.model
        pe = private_eval.draw(
            p.evaluation,
            p.test,
            {name: predict_scores(m, p.test.x) for name, m in models.items()},
            threshold=cut,
            reservation=evaluation_reservation,
            ledger=ledger,
            dataset=p.dataset,
            budget=p.policy.policy.budget,
            run_id=outcome.run_id,
            groups=p.meta.get("sensitive_groups"),
        )
        eta = p.policy.policy.evaluation.eta
        out.release, out.eta_check = pe, private_eval.recorded_eta(pe, eta)

        def from_pe(name: str) -> Evaluation:
            return from_release(private_eval.metrics_of(pe, name, eta=eta, policy=p.policy), cut)

        out.private = from_pe(private_eval.CANDIDATE)
        if private_eval.REFERENCE in pe.models:
            out.reference = from_pe(private_eval.REFERENCE)
    return out


def run_threshold(p: RunPlan) -> float:
    """The decision threshold: ``train.threshold``, or with ``prevalence`` the positive rate
    of the validation split (of the training patients when there is none), never the test
    split's."""
    held_out = p.validation if p.validation is not None and len(p.validation.y) else p.train
    return resolve_threshold(p.params.train.threshold, held_out.y)


def _pending() -> Evaluation:
    """A placeholder until the release is drawn (replaced before evaluate returns)."""
    nan = float("nan")
    return Evaluation(0, 0, nan, nan, nan, nan, nan, private=True)
