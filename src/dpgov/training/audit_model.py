"""``dpgov audit-model``: audit a registered candidate, charged to the ledger like any run.

The audit reproduces the candidate's mechanism from its facts (σ, q, T, C: exactly what its
reservation charged), its training data (the prepared folder of its dataset, at the data
version it recorded, restricted to its blocks), its model (the registered architecture,
re-initialised from the run's seed) and its optimizer (the run's MLflow params), and runs
:func:`dpgov.training.canary_audit.run_audit` with ``m`` canaries. The audit touches the
same patients' data as the candidate, so it reserves the same mechanism on the same blocks
first (refused like any run when their budget cannot afford it; under
``release.require_empirical_audit`` the governed run prepaid that reservation with the
candidate, :mod:`dpgov.training.prepaid_audit`, and the audit runs on it), commits the
steps it took, and settles the reservation on a failure (released before any step, aborted and fully
charged after). Then it records the result: an ``empirical_audit`` ledger entry (read by the
gate, :mod:`dpgov.gate.empirical`) and metrics plus ``empirical_audit.json`` on the
candidate's MLflow run. The claimed ε is the candidate's mechanism at the policy in force's
δ, by its accountant. The audit runs on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.accounting import epsilon
from dpgov.accounting.mechanism import DpSgdMechanism
from dpgov.contracts import json_safe
from dpgov.errors import UsageError
from dpgov.gate.candidate import load_candidate
from dpgov.gate.empirical import (
    ARTIFACT_EMPIRICAL_AUDIT,
    AUDIT_KIND,
    METRIC_CEILING,
    METRIC_CLAIMED,
    METRIC_LOWER_BOUND,
)
from dpgov.gate.in_force import policy_in_force
from dpgov.tracking import runs
from dpgov.training.canary_audit import (
    CONFIDENCE,
    WHITE_BOX,
    AuditMechanism,
    AuditResult,
    check_canaries,
    run_audit,
)
from dpgov.training.inputs import Arrays, arrays, load_data, subset
from dpgov.training.models import build_model, input_spec
from dpgov.training.params import ModelParams, TrainParams
from dpgov.training.prepaid_audit import prepaid_for
from dpgov.training.settle import quiet, reason, settle_reservation
from dpgov.training.validation_split import split_validation

if TYPE_CHECKING:
    from dpgov.gate.facts import CandidateFacts
    from dpgov.gate.ports import RegistryPort
    from dpgov.ledger import Ledger


@dataclass(frozen=True)
class AuditOutcome:
    result: AuditResult
    model: str
    version: str
    run_id: str
    reservation: str
    commit_seq: int
    record_seq: int
    prepaid: bool = False  # the reservation was prepaid with the candidate

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "model": self.model,
            "version": self.version,
            "run_id": self.run_id,
            "reservation": self.reservation,
            "prepaid": self.prepaid,
            "commit_seq": self.commit_seq,
            "ledger_seq": self.record_seq,
        }


class _Cfg:
    """The optimizer settings of the candidate's run (its MLflow params)."""

    def __init__(self, params: dict[str, str]) -> None:
        self.optimizer = params.get("optimizer", "sgd")
        self.learning_rate = float(params.get("learning_rate", 0.2))
        self.momentum = float(params.get("momentum", 0.0))


def _trained_patients(train: Arrays, facts: CandidateFacts, params: dict[str, str]) -> Any:
    """The patients DP-SGD trained on: the blocks' training patients, less the validation
    split where the run held one out (:mod:`dpgov.training.validation_split`, with the run's
    fraction and seed); None when neither matches the facts' count."""
    if len(train.y) == facts.n_train_patients:
        return train
    fraction = float(params.get("validation_fraction", TrainParams().validation_fraction))
    kept, _validation = split_validation(train, fraction, int(params.get("seed", 0)))
    return kept if len(kept.y) == facts.n_train_patients else None


def _fresh_model(model: str, version: str, run_params: dict[str, str], meta: dict[str, Any]) -> Any:
    """The registered architecture, built again and initialised from the run's seed.

    The registry holds a pt2 export (not trainable), so the module is rebuilt with
    :func:`dpgov.training.models.build_model`: the model's name from the run's params, an
    MLP's widths from the exported weights' shapes (dropout, which no weight records, is
    taken as 0; it is no part of the privacy mechanism); the rebuilt module's parameter
    shapes must equal the exported ones, else bad input."""
    import torch

    exported = runs.load_model(f"models:/{model}/{version}")
    shapes = [tuple(t.shape) for t in exported.state_dict().values()]
    name = run_params.get("model", "mlp")
    hidden = [s[0] for s in shapes if len(s) == 2][:-1]
    cfg = ModelParams(name=name, hidden=hidden or [1]) if name == "mlp" else ModelParams(name=name)
    torch.manual_seed(int(run_params.get("seed", 0)))
    net = build_model(cfg, input_spec(meta))
    rebuilt = [tuple(p.shape) for p in net.state_dict().values()]
    if rebuilt != shapes:
        raise UsageError(
            f"model {model!r} version {version}: its architecture ({name}) could not be rebuilt "
            "from the registry for an audit run"
        )
    return net.train()


def _auditable(where: str, facts: CandidateFacts, run_params: dict[str, str]) -> None:
    """What this audit run cannot reproduce is refused before anything is charged (exit 2):
    a ``model.factory`` model (the registry's export cannot be rebuilt as a trainable module
    without running the factory again), and patient-level DP-SGD (the canary game here is
    record-level: its canaries are records, not patients with several records)."""
    if run_params.get("model.factory"):
        raise UsageError(
            f"{where} was built by model.factory {run_params['model.factory']!r}: an audit run "
            "rebuilds only the built-in models (mlp, logreg, cnn) for now"
        )
    if (facts.max_records_per_patient or 1) > 1:
        raise UsageError(
            f"{where} was trained with patient-level DP-SGD (up to "
            f"{facts.max_records_per_patient} records per patient): the audit run reproduces "
            "record-level DP-SGD only for now"
        )


def audit_candidate(
    model: str,
    version: str,
    *,
    ledger: Ledger,
    registry: RegistryPort,
    canaries: int = 1000,
    threat_model: str = WHITE_BOX,
    data: str | Path | None = None,
    confidence: float = CONFIDENCE,
) -> AuditOutcome:
    """Audit ``model`` version ``version``: reserve, run, commit, record (see the module)."""
    facts, _info = load_candidate(registry, model, version)
    where = f"model {model!r} version {facts.model_version}"
    if not facts.private:
        raise UsageError(f"{where} is the non-private reference: it claims no ε to audit")
    sigma, q, steps, clip = (
        facts.noise_multiplier,
        facts.sample_rate,
        facts.steps,
        facts.max_grad_norm,
    )
    if sigma is None or q is None or steps is None or clip is None:
        raise UsageError(f"{where}: its facts record no complete mechanism (σ, q, T, C)")
    check_canaries(canaries)
    loaded = policy_in_force(ledger, facts.dataset)
    budget = loaded.policy.budget
    mech = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
    claimed = epsilon([mech], delta=budget.delta, accountant=budget.accountant)

    folder = Path(data) if data is not None else Path("data/prepared") / facts.dataset
    prepared, data_version = load_data(folder)
    if data_version != facts.data_version:
        raise UsageError(
            f"--data: {folder} holds data version {data_version}, {where} trained on "
            f"{facts.data_version}; the audit must run on the candidate's data"
        )
    train_all = arrays(prepared, "train")
    run_params = runs.read_run(facts.run_id)["params"]
    _auditable(where, facts, run_params)
    train = _trained_patients(
        subset(train_all, np.isin(train_all.block, facts.blocks)), facts, run_params
    )
    if train is None:
        raise UsageError(
            f"--data: {folder} holds other training patients in blocks "
            f"{', '.join(facts.blocks)} than the {facts.n_train_patients} {where} trained on"
        )
    cfg = _Cfg(run_params)
    net = _fresh_model(model, str(facts.model_version), run_params, prepared.meta)

    # prepaid with the candidate (release.require_empirical_audit), else reserved now
    prepaid = prepaid_for(
        ledger,
        runs.read_run(facts.run_id)["tags"],
        dataset=facts.dataset,
        blocks=list(facts.blocks),
        mechanism=mech,
    )
    fresh = None
    if prepaid is not None:
        reservation_id = prepaid.id
    else:
        fresh = ledger.reserve(
            dataset=facts.dataset,
            blocks=facts.blocks,
            mechanism=mech,
            budget=budget,
            policy_sha256=loaded.sha256,
            run_id=facts.run_id,
            data_version=facts.data_version,
        )
        reservation_id = fresh.id
    try:
        result = run_audit(
            net,
            train.x,
            train.y,
            mechanism=AuditMechanism(
                noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=clip
            ),
            epsilon_claimed=claimed,
            delta=budget.delta,
            cfg=cfg,
            canaries=canaries,
            threat_model=threat_model,
            confidence=confidence,
        )
    except BaseException as err:
        # the steps that ran are not known here: settle as if all did (never undercount);
        # a prepaid reservation is aborted likewise (it stays charged)
        if fresh is not None:
            settle_reservation(ledger, fresh, steps, err)
        else:
            why = f"the prepaid audit failed: {reason(err)}"
            quiet(lambda: ledger.abort(reservation_id, reason=why))
        raise
    commit = ledger.commit(reservation_id, steps=result.steps, run_id=facts.run_id)
    payload = json_safe(
        {
            **result.to_dict(),
            "model": model,
            "version": str(facts.model_version),
            "run_id": facts.run_id,
            "reservation": reservation_id,
            "prepaid": prepaid is not None,
            "commit_seq": commit.seq,
            "policy_sha256": loaded.sha256,
        }
    )
    record = ledger.append(kind=AUDIT_KIND, payload=payload)
    runs.log_metrics(
        facts.run_id,
        {
            METRIC_LOWER_BOUND: result.epsilon_lower_bound,
            METRIC_CLAIMED: result.epsilon_claimed,
            METRIC_CEILING: result.ceiling,
        },
    )
    runs.log_json(facts.run_id, {**payload, "ledger_seq": record.seq}, ARTIFACT_EMPIRICAL_AUDIT)
    return AuditOutcome(
        result=result,
        model=model,
        version=str(facts.model_version),
        run_id=facts.run_id,
        reservation=reservation_id,
        commit_seq=commit.seq,
        record_seq=record.seq,
        prepaid=prepaid is not None,
    )
