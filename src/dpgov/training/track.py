"""The track step: log a governed run (and its non-private reference) to MLflow.

The ledger is already committed here. The private run gets its metrics, its privacy statement
and its candidate facts; with ``register`` its model is logged and registered as a candidate
version (the gate reads the facts), and the ledger binds the digests of its facts, statement
and weights to its run, version and reservation (``facts_bound``). The non-private reference
leaves its metrics only (overall, per subgroup, its loss curve), in a run tagged non-private:
its model is never registered nor stored as an artifact, so nothing trained without DP can be
downloaded or released; its subgroup gaps travel in the private model's facts (the gate's
widening checks) and its privacy statement says so. A tracking failure marks the MLflow run
FAILED and propagates; the charge stands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.contracts import (
    ARTIFACT_CANDIDATE_FACTS,
    ARTIFACT_MEMBERSHIP_ATTACK,
    ARTIFACT_PRIVACY_STATEMENT,
    ARTIFACT_PRIVACY_STATEMENT_TEXT,
    ARTIFACT_SUBGROUPS_CSV,
    ARTIFACT_SUBGROUPS_JSON,
    MEMBERSHIP_NOT_COVERED,
    TAG_COMMIT,
    TAG_LEDGER_ENTRIES,
    TAG_MEMBERSHIP_ATTACK,
    TAG_PRIVATE_RUN,
    TAG_REFERENCE_RUN,
    block_metric_key,
    compact_json,
)
from dpgov.gate.reference import widening_on
from dpgov.tracking import runs
from dpgov.tracking.binding import bind_version
from dpgov.training import records
from dpgov.training.evaluate import DP_PREFIX, price_of_privacy, reference_facts
from dpgov.training.faults import fault_point

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Entry, Ledger, Reservation
    from dpgov.training.evaluate import Evaluation
    from dpgov.training.membership_attack import MembershipRisk
    from dpgov.training.planning import RunPlan
    from dpgov.training.steps import EvalOutcome, TrainOutcome


@dataclass
class TrackOutcome:
    run_id: str
    model_name: str
    model_version: str | None  # None when the model was not registered (register=False)
    reference_run_id: str | None
    reference_version: str | None  # always None: the reference is never registered
    facts: dict[str, Any]
    block_epsilon: dict[str, float] = field(default_factory=dict)


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
    runs.log_json(run_id, facts, ARTIFACT_CANDIDATE_FACTS)
    _log_subgroups(run_id, ev)
    return version


def _log_subgroups(run_id: str, ev: Evaluation) -> None:
    """The subgroup table (CSV and JSON, with the gaps)."""
    runs.log_text(run_id, records.subgroup_csv(ev), ARTIFACT_SUBGROUPS_CSV)
    runs.log_json(
        run_id,
        {"subgroups": ev.table(), "gaps": [g.model_dump() for g in ev.gaps]},
        ARTIFACT_SUBGROUPS_JSON,
    )


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
    evaluation_reservation: Reservation | None = None,
    membership: MembershipRisk | None = None,
) -> TrackOutcome:
    """Log both runs (private and reference) to MLflow; register the private model.

    The ledger is already committed here; the caller marks the MLflow run FAILED when this
    fails (:func:`dpgov.training.governed.run_governed` does, for every step after the
    commit). ``register=False`` logs neither model and registers no version (sweep trials are
    studies, not candidates); ``parent_run_id`` and ``tags`` apply to the reference run this
    step opens. ``membership``: the run's membership-inference attack
    (:mod:`dpgov.training.membership_attack`), logged on the private run as non-private
    metrics (tag ``dpgov.membership_attack: nonprivate``) and listed as not covered.
    """
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
                TAG_PRIVATE_RUN: outcome.run_id,
                **(tags or {}),
            },
            parent_run_id=parent_run_id,
        )
        runs.log_metrics(
            ref_run_id, {**ref_ev.metrics(), "seconds_per_epoch": _mean(ref_res.epoch_seconds)}
        )
        runs.log_series(ref_run_id, "train_loss", ref_res.epoch_losses)
        _log_subgroups(ref_run_id, ref_ev)  # metrics only: no model, no version, no facts
        runs.end_run(ref_run_id)
        ref_facts = reference_facts(ref_run_id, ref_ev)

    run_id = outcome.run_id
    used = ref_run_id if ref_run_id is not None and widening_on(p.policy.policy) else None
    statement = records.privacy_statement(
        p,
        reservation,
        commit_entry,
        steps,
        block_eps,
        reference_run=used,
        release=evals.release,
        release_reservation=evaluation_reservation,
    )
    if membership is not None:  # non-private uses of patient data: the statement says so
        statement["not_covered"] = [*statement["not_covered"], MEMBERSHIP_NOT_COVERED]
    ev = evals.private
    metrics: dict[str, float] = {
        "epsilon": statement["epsilon"],
        "delta": p.delta,
        "seconds_per_epoch": _mean(outcome.result.epoch_seconds),
        **{block_metric_key(b): v for b, v in block_eps.items()},
        **ev.metrics(),
        **release_metrics(evals),
    }
    if evals.reference is not None:
        dp = DP_PREFIX if ev.private else ""  # figures from the release stay marked as such
        price = price_of_privacy(ev, evals.reference)
        metrics.update({f"{dp}price.{k}": v for k, v in price.items()})
        if math.isfinite(evals.reference.auroc):
            metrics[f"{dp}reference_auroc"] = evals.reference.auroc
    if membership is not None:
        metrics.update(membership.metrics())
    runs.log_metrics(run_id, metrics)
    if membership is not None:
        runs.set_tags(run_id, {TAG_MEMBERSHIP_ATTACK: "nonprivate"})
        runs.log_json(run_id, membership.to_dict(), ARTIFACT_MEMBERSHIP_ATTACK)
    fault_point("during_track")
    runs.log_series(run_id, "train_loss", outcome.result.epoch_losses)
    runs.set_tags(
        run_id,
        {
            TAG_LEDGER_ENTRIES: compact_json(entries),
            TAG_COMMIT: str(commit_entry.seq),
            **({TAG_REFERENCE_RUN: ref_run_id} if ref_run_id else {}),
        },
    )
    runs.log_json(run_id, statement, ARTIFACT_PRIVACY_STATEMENT)
    runs.log_text(run_id, records.statement_text(statement), ARTIFACT_PRIVACY_STATEMENT_TEXT)
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
        release=evals.release,
    )
    if membership is not None:  # the release statement lists it as not covered
        facts["membership_attack"] = membership.facts()
    version = _register(run_id, outcome.result.model, p, facts, ev, register=register)
    if version is not None:
        bind_version(
            ledger, model=model_name, version=version, run_id=run_id, reservation=reservation.id
        )
    fault_point("after_register")
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


def release_metrics(evals: EvalOutcome) -> dict[str, float]:
    """The DP-evaluated release's cost and noise as MLflow metrics (none when exact):
    ``evaluation_epsilon`` (at ``delta``), ``evaluation_sigma`` (per count),
    ``evaluation_noise_multiplier``, ``evaluation_attempt`` and ``evaluation_eta_check`` (the
    η per check of the ``dp_*_lo`` / ``_hi`` bounds logged beside them)."""
    pe = evals.release
    if pe is None:
        return {}
    out = {
        "evaluation_epsilon": pe.epsilon,
        "evaluation_sigma": pe.sigma,
        "evaluation_noise_multiplier": pe.noise_multiplier,
        "evaluation_attempt": float(pe.attempt),
    }
    if evals.eta_check is not None:
        out["evaluation_eta_check"] = evals.eta_check
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
