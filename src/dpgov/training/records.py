"""What a governed run records: MLflow params and tags, the privacy statement, the candidate
facts for the gate and the model-version tags (all plain data; :mod:`dpgov.tracking` writes
them)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov import config
from dpgov.accounting import epsilon
from dpgov.contracts import (
    NOT_COVERED,
    STATUS_CANDIDATE,
    STATUS_REFERENCE,
    TAG_AUTHOR,
    TAG_BLOCKS,
    TAG_DATA_VERSION,
    TAG_DATASET,
    TAG_DELTA,
    TAG_EPSILON,
    TAG_LEDGER_ENTRIES,
    TAG_POLICY_SHA256,
    TAG_PRIVATE,
    TAG_RESERVATION,
    TAG_RUN_ID,
    TAG_STATUS,
    compact_json,
)
from dpgov.gate.facts import CandidateFacts
from dpgov.gate.noise import NOISE_SEED, TAG_NOISE_SOURCE
from dpgov.training import prepaid_audit
from dpgov.training.clipping_modes import REASON_PARAM
from dpgov.training.factory import model_sentence
from dpgov.training.trainer import noise_source

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.gate.dp_facts import PrivateEvaluation
    from dpgov.ledger import Entry, Reservation
    from dpgov.training.evaluate import Evaluation
    from dpgov.training.planning import RunPlan

SAMPLING = "poisson"
NEIGHBOURING = "add_remove"


def run_params(p: RunPlan, reservation: Reservation | None, *, private: bool) -> dict[str, Any]:
    """MLflow params of a run: the full privacy parameters for the private one."""
    cfg = p.params.train
    out: dict[str, Any] = {
        "private": private,
        "dataset": p.dataset,
        "blocks": p.blocks,
        "n_train": len(p.train.y),
        "model": p.params.model.name,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "optimizer": cfg.optimizer,
        "learning_rate": cfg.learning_rate,
        "momentum": cfg.momentum,
        "seed": cfg.seed,
        "device": p.device,
        "unit_of_privacy": "patient",
    }
    if p.model_report is not None:  # model.factory: what made it private, weights' SHA-256
        out.update(p.model_report.params())
    if private:
        out.update(
            {
                "noise_multiplier": p.noise_multiplier,
                "noise_calibrated": p.calibrated,
                "sample_rate": p.sampling.sample_rate,
                "expected_batch_size": p.sampling.expected_batch_size,
                "max_physical_batch_size": cfg.max_physical_batch_size,
                "world_size": cfg.world_size,  # processes (dpgov.training.distributed)
                "steps": p.sampling.steps,
                "max_grad_norm": cfg.max_grad_norm,
                "accountant": p.accountant,
                "delta": p.delta,
                "target_epsilon": cfg.target_epsilon,
                "sampling": SAMPLING,
                "neighbouring": NEIGHBOURING,
                "grad_sample_mode": p.grad_sample_mode,
                REASON_PARAM: p.grad_sample_mode_reason,
                "secure_rng": cfg.secure_rng,
                "noise_source": noise_source(cfg),
            }
        )
    else:
        out.update(
            {
                "sampling": "shuffled minibatches",
                "steps_per_epoch": math.ceil(len(p.train.y) / cfg.batch_size),
            }
        )
    return out


def run_tags(p: RunPlan, reservation: Reservation | None, *, private: bool) -> dict[str, str]:
    """MLflow run tags linking the run to its data version, ledger entries and policy."""
    tags = {
        TAG_PRIVATE: str(private).lower(),
        TAG_STATUS: STATUS_CANDIDATE if private else STATUS_REFERENCE,
        TAG_DATASET: p.dataset,
        TAG_BLOCKS: compact_json(p.blocks),
        TAG_DATA_VERSION: p.data_version,
        TAG_POLICY_SHA256: p.policy.sha256,
        TAG_AUTHOR: config.actor(),
    }
    if private:
        tags[TAG_NOISE_SOURCE] = noise_source(p.params.train)
    if reservation is not None:
        tags[TAG_RESERVATION] = reservation.id
        tags[TAG_LEDGER_ENTRIES] = compact_json([reservation.seq])
    return tags


def privacy_statement(
    p: RunPlan,
    reservation: Reservation,
    commit_entry: Entry,
    steps: int,
    block_epsilon: dict[str, float],
    *,
    reference_run: str | None = None,
    release: PrivateEvaluation | None = None,
    release_reservation: Reservation | None = None,
) -> dict[str, Any]:
    """What this model's guarantee is, for whom, and what it does not cover.

    ``reference_run``: the MLflow run of the non-private reference whose subgroup gaps this
    model's gate compares against (said in the statement). ``release``: the DP-evaluated
    release of the test metrics (``evaluation``: its ε, σ, test blocks and ledger
    reservation); without one the exact test metrics are listed as not covered."""
    eps = epsilon([p.mechanism.with_steps(steps)], delta=p.delta, accountant=p.accountant)
    reference = None
    if reference_run is not None:
        reference = {
            "run_id": reference_run,
            "private": False,
            "used_for": "the release gate's fairness widening checks (its subgroup gaps)",
            "model_stored": False,
        }
    return {
        "private": True,
        "epsilon": eps,
        "delta": p.delta,
        "accountant": p.accountant,
        "mechanism": p.mechanism.with_steps(steps).to_dict(),
        "noise_multiplier": p.noise_multiplier,
        "sample_rate": p.sampling.sample_rate,
        "expected_batch_size": p.sampling.expected_batch_size,
        "steps": steps,
        "epochs": p.sampling.epochs,
        "max_grad_norm": p.params.train.max_grad_norm,
        "sampling": SAMPLING,
        "neighbouring": NEIGHBOURING,
        "unit_of_privacy": "patient",
        "unit_of_privacy_column": p.meta.get("patient_id", "patient_id"),
        "records_per_patient": p.max_records_per_patient,
        "patient_level": p.patient_level,
        "max_images_per_patient_step": (
            p.params.train.max_images_per_patient_step if p.patient_level else 1
        ),
        "secure_rng": p.params.train.secure_rng,
        "noise_source": noise_source(p.params.train),
        "non_private_reference": reference,
        "covers": {
            "dataset": p.dataset,
            "blocks": p.blocks,
            "data_version": p.data_version,
            "n_train_patients": p.n_train_patients,
            "split": "train",
        },
        "cumulative_epsilon_per_block": block_epsilon,
        "epsilon_per_block_limit": p.policy.policy.budget.epsilon_per_block,
        "evaluation": evaluation_statement(release, release_reservation),
        "not_covered": not_covered(release),
        "ledger": {"reservation": reservation.id, "entries": [reservation.seq, commit_entry.seq]},
        "policy_sha256": p.policy.sha256,
        "model": p.model_report.statement() if p.model_report else None,
        # release.require_empirical_audit: the audit's reservation, prepaid with this run
        **(
            {"empirical_audit": prepaid_audit.statement(p.audit_reservation)}
            if p.audit_reservation
            else {}
        ),
    }


EXACT_TEST_METRICS = (
    "the exact test metrics (AUROC, accuracy, Brier score, calibration, per-subgroup AUROC "
    "and false-negative rates, and the reference's), released without noise: "
    "evaluation.private is false"
)
DP_TEST_METRICS = (
    "the test split's patients beyond the DP-evaluated release above (charged to their test "
    "blocks; the exact test metrics are never written)"
)


def not_covered(release: PrivateEvaluation | None) -> list[str]:
    """:data:`NOT_COVERED`, the test split's line said as it is for this run: the exact test
    metrics, or the DP-evaluated release that replaced them."""
    test_line = NOT_COVERED[0]
    return [
        (DP_TEST_METRICS if release is not None else EXACT_TEST_METRICS)
        if item == test_line
        else item
        for item in NOT_COVERED
    ]


def evaluation_statement(
    release: PrivateEvaluation | None, reservation: Reservation | None
) -> dict[str, Any]:
    """What the test metrics are: a DP-evaluated release (its cost and where it is charged)
    or exact."""
    if release is None:
        return {"private": False}
    return {
        "private": True,
        "mechanism": "gaussian_histograms",
        "epsilon": release.epsilon,
        "delta": release.delta,
        "sigma": release.sigma,
        "noise_multiplier": release.noise_multiplier,
        "sensitivity": release.sensitivity,
        "models": list(release.models),
        "test_blocks": list(release.test_blocks),
        "attempt": release.attempt,
        "noise_source": release.noise_source,
        "reservation": reservation.id if reservation else release.reservation_id,
        "ledger_entry": reservation.seq if reservation else None,
        "unit_of_privacy": "patient (one test record each)",
    }


def _clipping(s: dict[str, Any]) -> str:
    return "per-patient" if s.get("patient_level") else "per-example"


def _unit_line(s: dict[str, Any]) -> str:
    """The statement's unit-of-privacy sentence (patient-level DP-SGD: dpgov.training.
    patient_level; q is then the patient sample rate, the batch in patients)."""
    column = s["unit_of_privacy_column"]
    if s.get("patient_level"):
        return (
            f"Unit of privacy: patient (column {column!r}; patient-level DP-SGD: patients "
            f"sampled at rate q, up to {s['max_images_per_patient_step']} of a patient's images "
            f"per step, each patient's summed gradient clipped to C, so a patient with up to "
            f"{s['records_per_patient']} training records is protected whole, with no "
            "group-privacy factor)"
        )
    return f"Unit of privacy: one patient (column {column!r}, one training record per patient)"


def statement_text(s: dict[str, Any]) -> str:
    """The privacy statement in words (``privacy_statement.txt``)."""
    covers = s["covers"]
    return (
        f"This model was trained with differential privacy: (ε = {s['epsilon']:.4f}, "
        f"δ = {s['delta']:g}) for this run alone, computed with the {s['accountant'].upper()} "
        f"accountant.\n"
        f"Mechanism: DP-SGD, {SAMPLING} sampling at rate q = {s['sample_rate']:.6g} "
        f"(expected batch {s['expected_batch_size']:.1f}), noise multiplier σ = "
        f"{s['noise_multiplier']:.6g}, {_clipping(s)} clipping norm C = {s['max_grad_norm']:g}, "
        f"{s['steps']} steps ({s['epochs']} epochs).\n"
        f"{_unit_line(s)}, add/remove-one neighbouring datasets.\n"
        f"Covers: dataset {covers['dataset']!r}, blocks {', '.join(covers['blocks'])}, data "
        f"version {covers['data_version']}, {covers['n_train_patients']} training patients.\n"
        "Cumulative ε per block after this run (all charges composed, limit "
        f"{s['epsilon_per_block_limit']:g}): "
        + ", ".join(f"{b} {v:.4f}" for b, v in s["cumulative_epsilon_per_block"].items())
        + ".\n"
        + _noise_text(s)
        + _evaluation_text(s)
        + _reference_text(s)
        + prepaid_audit.statement_sentence(s)
        + (model_sentence(s.get("model")) + "\n" if s.get("model") else "")
        + "Not covered: "
        + "; ".join(s["not_covered"])
        + ".\n"
        f"Ledger: reservation {s['ledger']['reservation']}, entries "
        f"{', '.join(str(e) for e in s['ledger']['entries'])}; policy sha256 "
        f"{s['policy_sha256']}.\n"
    )


def _noise_text(s: dict[str, Any]) -> str:
    source = s.get("noise_source")
    if source == NOISE_SEED:
        return (
            "Noise: REPRODUCIBLE: the Gaussian noise and the Poisson sampling were derived "
            "from train.seed (train.reproducible_noise: true), so anyone who reads the run can "
            "regenerate them; the guarantee above assumes secret noise and does not hold.\n"
        )
    how = {
        "os_entropy": "drawn from operating-system entropy (secret, not cryptographically secure)",
        "csprng": "drawn from a cryptographically secure generator (Opacus secure mode)",
    }.get(str(source), f"from {source}")
    return f"Noise: the Gaussian noise and the Poisson sampling were {how}.\n"


def _evaluation_text(s: dict[str, Any]) -> str:
    ev = s.get("evaluation") or {}
    if not ev.get("private"):
        return "Test metrics: exact (not differentially private; see Not covered).\n"
    return (
        f"Test metrics: DP-evaluated, one release of noisy score histograms (Gaussian, "
        f"σ = {ev['sigma']:.4g} per count, sensitivity {ev['sensitivity']:.4g}): (ε = "
        f"{ev['epsilon']:.4f}, δ = {ev['delta']:g}) charged to test blocks "
        f"{', '.join(ev['test_blocks'])} (reservation {ev['reservation']}, attempt "
        f"{ev['attempt']}).\n"
    )


def _reference_text(s: dict[str, Any]) -> str:
    ref = s.get("non_private_reference")
    if not ref:
        return ""
    return (
        f"Non-private reference: a model trained WITHOUT differential privacy on the same "
        f"patients (run {ref['run_id']}) is what {ref['used_for']} compare against; only "
        "its metrics were kept (its model was neither registered nor stored).\n"
    )


def input_example(x: np.ndarray) -> np.ndarray:
    """A few rows for MLflow's pt2 export (traced with a dynamic batch dimension)."""
    return np.ascontiguousarray(x[: min(4, len(x))], dtype=np.float32)


def candidate_facts(
    p: RunPlan,
    *,
    run_id: str,
    private: bool,
    ev: Evaluation,
    model_name: str,
    model_version: str | None,
    reservation: Reservation | None,
    entries: list[int],
    steps: int | None,
    eps: float | None,
    reference: Any = None,
    release: PrivateEvaluation | None = None,
) -> dict[str, Any]:
    """``candidate_facts.json``: validated through :class:`CandidateFacts`, then as JSON.
    With ``release`` (a DP-evaluated run) every test metric of ``ev`` comes from it and it is
    recorded as ``private_evaluation``; brier is then None."""
    cfg = p.params.train
    facts = CandidateFacts(
        model_name=model_name,
        model_version=model_version,
        run_id=run_id,
        private=private,
        author=config.actor(),
        dataset=p.dataset,
        data_version=p.data_version,
        blocks=list(p.blocks),
        reservation_id=reservation.id if reservation else None,
        ledger_entries=entries,
        epsilon=eps if private else None,
        delta=p.delta if private else None,
        accountant=p.accountant if private else None,
        noise_multiplier=p.noise_multiplier if private else None,
        sample_rate=p.sampling.sample_rate if private else None,
        steps=steps if private else None,
        max_grad_norm=cfg.max_grad_norm if private else None,
        secure_rng=bool(cfg.secure_rng) if private else False,
        noise_source=noise_source(cfg) if private else None,
        n_train_patients=p.n_train_patients,
        max_records_per_patient=p.max_records_per_patient,
        auroc=ev.auroc,
        auroc_lo=ev.auroc_lo,
        auroc_hi=ev.auroc_hi,
        accuracy=ev.accuracy,
        brier=None if ev.private else ev.brier,
        calibration_error=ev.calibration_error,
        subgroups=list(ev.subgroups),
        gaps=list(ev.gaps),
        reference=reference,
        policy_sha256=p.policy.sha256,
        private_evaluation=release,
    )
    return facts.model_dump(mode="json")


def version_tags(facts: dict[str, Any]) -> dict[str, str]:
    """The model-version tags of docs/INTERFACES.md, from the candidate facts."""
    eps, delta = facts["epsilon"], facts["delta"]
    return {
        TAG_STATUS: STATUS_CANDIDATE if facts["private"] else STATUS_REFERENCE,
        TAG_PRIVATE: str(facts["private"]).lower(),
        TAG_RUN_ID: facts["run_id"],
        TAG_DATA_VERSION: facts["data_version"],
        TAG_DATASET: facts["dataset"],
        TAG_BLOCKS: compact_json(facts["blocks"]),
        TAG_RESERVATION: facts["reservation_id"] or "",
        TAG_LEDGER_ENTRIES: compact_json(facts["ledger_entries"]),
        TAG_POLICY_SHA256: facts["policy_sha256"],
        TAG_AUTHOR: facts["author"],
        TAG_EPSILON: repr(float(eps)) if eps is not None else "inf",
        TAG_DELTA: repr(float(delta)) if delta is not None else "none",
    }


def subgroup_csv(ev: Evaluation) -> str:
    """The subgroup table as CSV."""
    import io

    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(ev.table()).to_csv(buf, index=False)
    return buf.getvalue()
