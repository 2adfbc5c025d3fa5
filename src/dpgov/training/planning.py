"""The plan step: check everything that can be checked before budget moves, fix the mechanism.

Bad input raises :class:`UsageError` (exit 2); a budget that cannot afford the run raises
:class:`Refused` (exit 1). Nothing is written: σ for the target ε is calibrated against what
the chosen blocks already spent (the ledger composes their history), not a fresh budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.accounting import DpSgdMechanism, calibrate_noise_multiplier, epsilon
from dpgov.accounting.accountants import quiet_absl
from dpgov.accounting.calibrate import SIGMA_MAX, SIGMA_MIN
from dpgov.accounting.errors import AccountingInputError, InfeasibleBudget
from dpgov.accounting.filters import calibrate_filter
from dpgov.accounting.kinds import rdp_vector
from dpgov.contracts import exceeds
from dpgov.errors import Refused, UsageError
from dpgov.training.clipping_modes import REASON_PARAM, choose_mode, mode_reason
from dpgov.training.factory import ModelReport, report_of
from dpgov.training.inputs import Arrays, PreparedLike, arrays, data_version_of, subset
from dpgov.training.models import build_model, input_spec, takes_images
from dpgov.training.precision import check_precision
from dpgov.training.private_eval import EvaluationPlan, plan_evaluation
from dpgov.training.trainer import (
    check_secure_rng,
    resolve_device,
    sampling_plan,
)
from dpgov.training.validation_split import split_validation

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Ledger, Reservation
    from dpgov.policy import LoadedPolicy
    from dpgov.policy.schema import Budget
    from dpgov.training.params import RunParams
    from dpgov.training.trainer import SamplingPlan


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
    # the training patients held out from DP-SGD for the threshold (dpgov.training.
    # validation_split) and the DP-evaluated release, when the policy asks for one
    validation: Arrays | None = None
    evaluation: EvaluationPlan | None = None
    # what was done to a model.factory model to make it private (dpgov.training.factory)
    model_report: ModelReport | None = None
    # patient-level DP-SGD (dpgov.training.patient_level) when a patient holds several
    # training records: the sample rate is over patients, each patient's sum clipped
    patient_level: bool = False
    max_records_per_patient: int = 1
    # why this grad_sample_mode (dpgov.training.clipping_modes.mode_reason), logged
    grad_sample_mode_reason: str = ""
    # release.require_empirical_audit: the candidate's audit (the same mechanism again on the
    # same blocks) is calibrated for and reserved with the run (dpgov.training.prepaid_audit);
    # audit_reservation is set once it is reserved (dataclasses.replace, by the governed run)
    audit_prepaid: bool = False
    audit_reservation: Reservation | None = None

    @property
    def n_train_patients(self) -> int:
        """The training patients (privacy units) DP-SGD samples from."""
        return len(np.unique(self.train.patient_id)) if self.patient_level else len(self.train.y)

    @property
    def target_epsilon(self) -> float:
        return self.params.train.target_epsilon

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_version": self.data_version,
            "blocks": self.blocks,
            "n_train_patients": self.n_train_patients,
            "n_train_records": len(self.train.y),
            "unit_of_privacy": "patient",
            "patient_level": self.patient_level,
            "max_records_per_patient": self.max_records_per_patient,
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
            REASON_PARAM: self.grad_sample_mode_reason,
            "model": self.params.model.name,
            "n_validation_patients": len(self.validation.y) if self.validation else 0,
            "evaluation": self.evaluation.summary() if self.evaluation else None,
            "model_changes": self.model_report.change_lines() if self.model_report else [],
            "empirical_audit_prepaid": self.audit_prepaid,
        }


def plan(
    params: RunParams,
    policy: LoadedPolicy,
    data: PreparedLike,
    *,
    ledger: Ledger,
    data_version: str | None = None,
    prepay_audit: bool = True,
) -> RunPlan:
    """Check the run and fix its mechanism; nothing is written anywhere.

    Under ``release.require_empirical_audit`` (and ``prepay_audit``: a run that registers a
    candidate) σ is calibrated for the run and its empirical audit together
    (:mod:`dpgov.training.prepaid_audit`)."""
    cfg = params.train
    budget = policy.policy.budget
    meta = data.meta
    dataset = str(meta.get("dataset") or "")
    if not dataset:
        raise UsageError("meta.json: dataset is missing")
    version = data_version or data_version_of(data, None)
    device = resolve_device(cfg.device)
    check_secure_rng(cfg.secure_rng)
    if meta.get("kind", "tabular") == "image" and not takes_images(params.model.name):
        raise UsageError(
            f"model.name: {params.model.name!r} cannot take image data; use cnn or model.factory"
        )

    train_all = arrays(data, "train")
    test = arrays(data, "test")
    blocks = _choose_blocks(cfg.blocks, meta, train_all, dataset, ledger, budget)
    train = subset(train_all, np.isin(train_all.block, blocks))
    max_records = _check_unit_of_privacy(train, test, meta)
    train, validation = split_validation(train, cfg.validation_fraction, cfg.seed)
    if len(np.unique(train.y)) < 2:
        raise UsageError(f"training data of blocks {blocks}: labels hold one class only")
    if cfg.validation_fraction > 0 and len(validation.y) == 0:
        raise UsageError(
            f"train.validation_fraction: {cfg.validation_fraction:g} of the "
            f"{len(train.y)} training patients of blocks {blocks} leaves no validation patient"
        )
    evaluation, test = plan_evaluation(
        policy,
        meta,
        test,
        ledger=ledger,
        dataset=dataset,
        reference=bool(cfg.reference and policy.policy.release.allow_reference),
    )

    model = build_model(
        params.model,
        input_spec(meta),
        allowed_factories=policy.policy.release.allowed_model_factories,
    )
    chosen = choose_mode(cfg.grad_sample_mode, model)
    if cfg.world_size > 1 and cfg.grad_sample_mode == "auto":
        chosen = "hooks"  # DPDDP's processes clip per patient with per-example gradients
    mode = check_precision(cfg.precision, cfg.grad_sample_mode, chosen)
    # several records for a patient: patient-level DP-SGD, q over patients (batch_size is
    # then the expected patients per step), whose per-patient clipping needs per-example
    # gradients (hooks, not ghost clipping)
    patient_level = max_records > 1
    if patient_level:
        mode = _patient_level_mode(cfg.grad_sample_mode, cfg)
    reason = mode_reason(
        cfg.grad_sample_mode, mode, model, precision=cfg.precision, patient_level=patient_level
    )
    n_units = len(np.unique(train.patient_id)) if patient_level else len(train.y)
    sampling = sampling_plan(n=n_units, batch_size=cfg.batch_size, epochs=cfg.epochs)
    if budget.delta >= 1.0 / n_units:
        raise UsageError(
            f"policy budget.delta: {budget.delta:g} is not below 1/n = {1 / n_units:.3g} "
            f"for the {n_units} training patients"
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
            domain = str((meta.get("pseudonymisation") or {}).get("domain") or dataset)
            sigma = fresh_sigma(
                target_epsilon=cfg.target_epsilon,
                sample_rate=sampling.sample_rate,
                steps=sampling.steps,
                budget=budget,
                domain=domain,
            )
            calibrated = True
        audit_prepaid = prepay_audit and policy.policy.release.require_empirical_audit
        if audit_prepaid and calibrated:
            sigma = max(sigma, _pair_sigma(ledger, dataset, known, sampling, budget, meta))
        mechanism = DpSgdMechanism(
            noise_multiplier=sigma, sample_rate=sampling.sample_rate, steps=sampling.steps
        )
        eps_run = epsilon([mechanism], delta=budget.delta, accountant=budget.accountant)
    except AccountingInputError as err:
        raise UsageError(f"train: {err}") from err
    except InfeasibleBudget as err:
        raise Refused(f"dataset {dataset!r}, blocks {', '.join(blocks)}: {err}") from err
    if exceeds(eps_run, cfg.target_epsilon):
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
        grad_sample_mode_reason=reason,
        calibrated=calibrated,
        validation=validation,
        evaluation=evaluation,
        model_report=report_of(model),
        patient_level=patient_level,
        max_records_per_patient=max_records,
        audit_prepaid=audit_prepaid,
    )


def _pair_sigma(
    ledger: Ledger,
    dataset: str,
    known: list[str],
    sampling: SamplingPlan,
    budget: Budget,
    meta: dict[str, Any],
) -> float:
    """The smallest σ keeping the blocks within their limit after the run *and* its audit:
    two runs of (σ, q, T) compose exactly as one of (σ, q, 2T) (identical subsampled Gaussian
    steps self-compose; tests/unit/training/test_prepaid_audit.py checks it with
    dp_accounting), so the block limit is calibrated at 2T. The run's own target binds
    separately, at T, in the caller."""
    steps = 2 * sampling.steps
    try:
        if known:
            return ledger.calibrate(
                dataset=dataset,
                blocks=known,
                target_epsilon=budget.epsilon_per_block,
                sample_rate=sampling.sample_rate,
                steps=steps,
                budget=budget,
            )
        domain = str((meta.get("pseudonymisation") or {}).get("domain") or dataset)
        return fresh_sigma(
            target_epsilon=budget.epsilon_per_block,
            sample_rate=sampling.sample_rate,
            steps=steps,
            budget=budget,
            domain=domain,
        )
    except (Refused, InfeasibleBudget) as err:
        raise Refused(
            "release.require_empirical_audit: no σ lets the run and its empirical audit "
            f"({sampling.steps} + {sampling.steps} steps at q {sampling.sample_rate:.4g}) fit "
            f"the blocks of dataset {dataset!r}; nothing charged ({err})"
        ) from err


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


def _patient_level_mode(requested: str, cfg: Any) -> str:
    """Patient-level DP-SGD sums per-example gradients per patient: Opacus's hooks."""
    if requested == "ghost":
        raise UsageError(
            "train.grad_sample_mode: 'ghost' computes per-example norms only, and patients "
            "with several records need their gradients summed per patient: use 'hooks' or 'auto'"
        )
    if cfg.max_images_per_patient_step > cfg.max_physical_batch_size:
        raise UsageError(
            f"train.max_images_per_patient_step: {cfg.max_images_per_patient_step} is more than "
            f"train.max_physical_batch_size {cfg.max_physical_batch_size}: a patient's images "
            "in a step must fit one physical batch"
        )
    return "hooks"


def _check_unit_of_privacy(train: Arrays, test: Arrays, meta: dict[str, Any]) -> int:
    """The most training records one patient holds. More than one is trained at the patient
    level (dpgov.training.patient_level) where the contract declares it (``privacy:
    max_records_per_patient``); beyond what it declares, refused."""
    ids, counts = np.unique(train.patient_id, return_counts=True)
    declared = int((meta.get("privacy_unit") or {}).get("max_records_per_patient") or 1)
    most = int(counts.max()) if counts.size else 0
    if most > declared:
        worst = ids[np.argmax(counts)]
        raise Refused(
            f"unit of privacy: patient {worst!r} has {most} training records; the data "
            f"contract declares at most {declared} per patient (privacy: "
            "max_records_per_patient; more than one trains patient-level DP-SGD)"
        )
    overlap = np.intersect1d(ids, np.unique(test.patient_id))
    if overlap.size:
        raise UsageError(
            f"prepared data: {overlap.size} patient(s) appear in both train and test splits"
        )
    return most


def fresh_sigma(
    *, target_epsilon: float, sample_rate: float, steps: int, budget: Budget, domain: str
) -> float:
    """σ for blocks with no charges yet: the smallest meeting the run's own ``target_epsilon``
    (the accountant's ε: one run is not adaptive) and the block limit under the rule the
    reservation will apply (the RDP filter over ``budget.orders`` under ``adaptive``, the
    accountant under ``fixed``), as :meth:`dpgov.ledger.Ledger.calibrate` does for known
    blocks; without it a run calibrated to its target alone could be refused at reserve."""

    def at(target: float) -> float:
        return calibrate_noise_multiplier(
            target_epsilon=target,
            delta=budget.delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=budget.accountant,
        )

    if budget.mode_for(domain) == "fixed":
        return max(at(target_epsilon), at(budget.epsilon_per_block))
    orders = tuple(budget.orders)

    def charge_rdp(sigma: float) -> list[float]:
        mech = DpSgdMechanism(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        with quiet_absl():  # "failed to converge" at small σ: that order is excluded
            return list(rdp_vector(mech, orders, 1))

    return max(
        at(target_epsilon),
        calibrate_filter(
            [],
            epsilon=budget.epsilon_per_block,
            delta=budget.delta,
            orders=orders,
            charge_rdp=charge_rdp,
            sigma_min=SIGMA_MIN,
            sigma_max=SIGMA_MAX,
        ),
    )
