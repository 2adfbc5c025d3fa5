"""What a governed run records: MLflow params and tags, the privacy statement, the candidate
facts for the gate and the model-version tags (all plain data; :mod:`dpgov.tracking` writes
them)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Entry, Reservation
    from dpgov.training.evaluate import Evaluation
    from dpgov.training.governed import RunPlan

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
    if private:
        out.update(
            {
                "noise_multiplier": p.noise_multiplier,
                "noise_calibrated": p.calibrated,
                "sample_rate": p.sampling.sample_rate,
                "expected_batch_size": p.sampling.expected_batch_size,
                "max_physical_batch_size": cfg.max_physical_batch_size,
                "steps": p.sampling.steps,
                "max_grad_norm": cfg.max_grad_norm,
                "accountant": p.accountant,
                "delta": p.delta,
                "target_epsilon": cfg.target_epsilon,
                "sampling": SAMPLING,
                "neighbouring": NEIGHBOURING,
                "grad_sample_mode": p.grad_sample_mode,
                "secure_rng": cfg.secure_rng,
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
    from dpgov import config

    tags = {
        "dpgov.private": str(private).lower(),
        "dpgov.status": "candidate" if private else "reference",
        "dpgov.dataset": p.dataset,
        "dpgov.blocks": compact_json(p.blocks),
        "dpgov.data_version": p.data_version,
        "dpgov.policy_sha256": p.policy.sha256,
        "dpgov.author": config.actor(),
    }
    if reservation is not None:
        tags["dpgov.reservation"] = reservation.id
        tags["dpgov.ledger_entries"] = compact_json([reservation.seq])
    return tags


def compact_json(value: Any) -> str:
    """JSON without spaces, for list-valued tags (``["1995","1996"]``)."""
    return json.dumps(value, separators=(",", ":"))


def privacy_statement(
    p: RunPlan,
    reservation: Reservation,
    commit_entry: Entry,
    steps: int,
    block_epsilon: dict[str, float],
) -> dict[str, Any]:
    """What this model's guarantee is, for whom, and what it does not cover."""
    from dpgov.accounting import epsilon

    eps = epsilon([p.mechanism.with_steps(steps)], delta=p.delta, accountant=p.accountant)
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
        "records_per_patient": 1,
        "secure_rng": p.params.train.secure_rng,
        "covers": {
            "dataset": p.dataset,
            "blocks": p.blocks,
            "data_version": p.data_version,
            "n_train_patients": len(p.train.y),
            "split": "train",
        },
        "cumulative_epsilon_per_block": block_epsilon,
        "epsilon_per_block_limit": p.policy.policy.budget.epsilon_per_block,
        "not_covered": [
            "the held-out test split (used for evaluation, released as metrics)",
            "the non-private reference model (never promotable)",
            "choices made outside this run (hyperparameters, preprocessing fitted on data)",
        ],
        "ledger": {"reservation": reservation.id, "entries": [reservation.seq, commit_entry.seq]},
        "policy_sha256": p.policy.sha256,
    }


def statement_text(s: dict[str, Any]) -> str:
    """The privacy statement in words (``privacy_statement.txt``)."""
    covers = s["covers"]
    return (
        f"This model was trained with differential privacy: (ε = {s['epsilon']:.4f}, "
        f"δ = {s['delta']:g}) for this run alone, computed with the {s['accountant'].upper()} "
        f"accountant.\n"
        f"Mechanism: DP-SGD, {SAMPLING} sampling at rate q = {s['sample_rate']:.6g} "
        f"(expected batch {s['expected_batch_size']:.1f}), noise multiplier σ = "
        f"{s['noise_multiplier']:.6g}, per-example clipping norm C = {s['max_grad_norm']:g}, "
        f"{s['steps']} steps ({s['epochs']} epochs).\n"
        f"Unit of privacy: one patient (column {s['unit_of_privacy_column']!r}, one training "
        f"record per patient), add/remove-one neighbouring datasets.\n"
        f"Covers: dataset {covers['dataset']!r}, blocks {', '.join(covers['blocks'])}, data "
        f"version {covers['data_version']}, {covers['n_train_patients']} training patients.\n"
        "Cumulative ε per block after this run (all charges composed, limit "
        f"{s['epsilon_per_block_limit']:g}): "
        + ", ".join(f"{b} {v:.4f}" for b, v in s["cumulative_epsilon_per_block"].items())
        + ".\n"
        "Not covered: " + "; ".join(s["not_covered"]) + ".\n"
        f"Ledger: reservation {s['ledger']['reservation']}, entries "
        f"{', '.join(str(e) for e in s['ledger']['entries'])}; policy sha256 "
        f"{s['policy_sha256']}.\n"
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
) -> dict[str, Any]:
    """``candidate_facts.json``: validated through :class:`CandidateFacts`, then as JSON."""
    from dpgov import config
    from dpgov.gate.facts import CandidateFacts

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
        n_train_patients=len(p.train.y),
        auroc=ev.auroc,
        auroc_lo=ev.auroc_lo,
        auroc_hi=ev.auroc_hi,
        accuracy=ev.accuracy,
        brier=ev.brier,
        calibration_error=ev.calibration_error,
        subgroups=list(ev.subgroups),
        gaps=list(ev.gaps),
        reference=reference,
        policy_sha256=p.policy.sha256,
    )
    return facts.model_dump(mode="json")


def version_tags(facts: dict[str, Any]) -> dict[str, str]:
    """The model-version tags of docs/INTERFACES.md, from the candidate facts."""
    eps, delta = facts["epsilon"], facts["delta"]
    return {
        "dpgov.status": "candidate" if facts["private"] else "reference",
        "dpgov.private": str(facts["private"]).lower(),
        "dpgov.run_id": facts["run_id"],
        "dpgov.data_version": facts["data_version"],
        "dpgov.dataset": facts["dataset"],
        "dpgov.blocks": compact_json(facts["blocks"]),
        "dpgov.reservation": facts["reservation_id"] or "",
        "dpgov.ledger_entries": compact_json(facts["ledger_entries"]),
        "dpgov.policy_sha256": facts["policy_sha256"],
        "dpgov.author": facts["author"],
        "dpgov.epsilon": repr(float(eps)) if eps is not None else "inf",
        "dpgov.delta": repr(float(delta)) if delta is not None else "none",
    }


def subgroup_csv(ev: Evaluation) -> str:
    """The subgroup table as CSV."""
    import io

    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(ev.table()).to_csv(buf, index=False)
    return buf.getvalue()


def metric_key(text: str) -> str:
    """A name usable in an MLflow metric key."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(text))
