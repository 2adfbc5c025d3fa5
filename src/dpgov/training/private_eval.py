"""DP-evaluated release of a governed run (issue 17): plan it, charge it, draw it once.

With ``evaluation.private: true`` the run's test metrics come from one release of noisy
per-class score histograms (:mod:`dpgov.training.dp_evaluation`, docs/evaluation.md), never
from the exact test split. What this module adds around the mechanism:

- **plan** (:func:`plan_evaluation`, before anything is written): the release's models
  (``candidate``, and ``reference`` when one is trained), its sensitivity and σ for
  ``evaluation.epsilon`` at ``budget.delta``, the mechanism the ledger charges (DP-SGD with
  q = 1, T = 1 at noise multiplier z = σ/Δ), the test blocks it is charged to (every test block
  of the prepared data that is not retired; the release covers their patients only), and the
  attempt (1 + the releases already charged to those blocks). Refused as bad input (exit 2):
  an evaluation budget that cannot afford one release (``evaluation.epsilon`` over
  ``evaluation.epsilon_per_block`` or ``budget.epsilon_per_block``, or one release's ε under
  the enforced rule over the cap), and a σ at which the smallest judged subgroup
  (``fairness.min_group_size``) can get no useful interval (:func:`check_useful`). Refused
  (exit 1): every test block retired (fresh test data is needed).
- **reserve** (:func:`reserve_evaluation`, before training): the test blocks are registered
  when the ledger lacks them (split ``test``, their members), and the release is reserved on
  them under the budget with ``epsilon_per_block`` lowered to ``evaluation.epsilon_per_block``
  when that is smaller: a release the test blocks cannot afford is refused with nothing
  charged. The charge stands from here on: a crash before the release leaves it (aborted,
  still charged); only a training reservation refused right after it releases it (no noise was
  drawn).
- **draw** (:func:`draw`): the release, once; the reservation committed (one step); then each
  test block that could not afford another release under its cap is retired, so the gate can
  say that fresh test data is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.accounting.accountants import quiet_absl
from dpgov.accounting.filters import filter_epsilon
from dpgov.accounting.kinds import rdp_vector
from dpgov.contracts import exceeds
from dpgov.data.test_blocks import TEST_SPLIT, evaluation_block
from dpgov.errors import Refused, UsageError
from dpgov.gate.dp_metrics import DPMetrics, dp_metrics, eta_per_check
from dpgov.gate.subgroups import rule_of
from dpgov.training.dp_evaluation import (
    calibrate_sigma,
    evaluation_mechanism,
    release,
    sensitivity,
)
from dpgov.training.inputs import Arrays, subset
from dpgov.training.settle import quiet, reason

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.gate.dp_facts import PrivateEvaluation
    from dpgov.ledger import Ledger, Reservation
    from dpgov.policy import LoadedPolicy
    from dpgov.policy.schema import Budget

CANDIDATE = "candidate"
REFERENCE = "reference"
RETIRE_REASON = "test block spent by DP-evaluated releases: fresh test data is needed"


@dataclass(frozen=True)
class EvaluationPlan:
    """One planned DP-evaluated release (module docstring)."""

    epsilon: float  # evaluation.epsilon: the release's ε at delta (analytic Gaussian)
    delta: float
    bins: int
    eta: float
    models: tuple[str, ...]
    attributes: tuple[str, ...]
    sensitivity: float
    sigma: float
    mechanism: DpSgdMechanism  # what the ledger charges: q = 1, T = 1, z = sigma/sensitivity
    enforced_epsilon: float  # one release's ε under the rule the ledger enforces
    cap: float  # what the test blocks may spend: budget and evaluation caps together
    test_blocks: tuple[str, ...]
    source_blocks: tuple[str, ...]  # the prepared blocks of the test rows released
    attempt: int
    domain: str

    def summary(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "sigma": self.sigma,
            "noise_multiplier": self.mechanism.noise_multiplier,
            "sensitivity": self.sensitivity,
            "enforced_epsilon": self.enforced_epsilon,
            "cap": self.cap,
            "models": list(self.models),
            "test_blocks": list(self.test_blocks),
            "attempt": self.attempt,
            "bins": self.bins,
        }


def enforced_epsilon(mechanism: Any, count: int, budget: Budget, domain: str) -> float:
    """ε of ``count`` runs of ``mechanism`` under the rule the ledger enforces for ``domain``
    (the RDP filter over ``budget.orders`` under ``adaptive``, the accountant under ``fixed``)."""
    if budget.mode_for(domain) == "fixed":
        return epsilon([mechanism] * count, delta=budget.delta, accountant=budget.accountant)
    orders = tuple(budget.orders)
    with quiet_absl():
        rdp = rdp_vector(mechanism, orders, count)
    return filter_epsilon(rdp, budget.delta, orders)


def check_useful(*, sigma: float, bins: int, eta: float, min_group_size: int) -> None:
    """UsageError when a subgroup of ``min_group_size`` patients can get no useful interval
    at ``sigma``, decided from these numbers alone (never from data): a rate over a subgroup
    of n patients (accuracy at 1/2, the most favourable case of the release's rates) carries
    noise of std σ·sqrt(B/2)/n over its B + B class counts (B ≤ bins + 1, the threshold being
    an extra edge); when even at the whole η its two-sided noise-only half-width
    Φ⁻¹(1 − η/2)·σ·sqrt(B/2)/n reaches 1/2, every interval of that subgroup covers any rate."""
    b = bins + 1
    q = NormalDist().inv_cdf(1.0 - eta / 2.0)
    half = q * sigma * math.sqrt(b / 2.0) / min_group_size
    if half >= 0.5:
        need = math.floor(2.0 * q * sigma * math.sqrt(b / 2.0)) + 1
        raise UsageError(
            f"evaluation: at σ={sigma:.3g} per count ({b} bins), a subgroup of "
            f"fairness.min_group_size {min_group_size} patients gets a noise-only interval of "
            f"±{half:.2f} on any rate: no useful interval; raise evaluation.epsilon, lower "
            f"evaluation.bins, or raise fairness.min_group_size to at least {need}"
        )


def plan_evaluation(
    policy: LoadedPolicy,
    meta: dict[str, Any],
    test: Arrays,
    *,
    ledger: Ledger,
    dataset: str,
    reference: bool,
) -> tuple[EvaluationPlan | None, Arrays]:
    """The release to charge and the test rows it covers; ``(None, test)`` when the policy
    does not ask for private evaluation. Nothing is written (module docstring)."""
    ev = policy.policy.evaluation
    if not ev.private:
        return None, test
    budget = policy.policy.budget
    for key, cap in (
        ("budget.epsilon_per_block", budget.epsilon_per_block),
        ("evaluation.epsilon_per_block", ev.epsilon_per_block),
    ):
        if cap is not None and exceeds(ev.epsilon, cap):
            raise UsageError(
                f"evaluation.epsilon: {ev.epsilon:g} is over {key} {cap:g}: the evaluation "
                "budget cannot afford one gate"
            )
    cap = min(budget.epsilon_per_block, ev.epsilon_per_block or math.inf)
    models = (CANDIDATE, REFERENCE) if reference else (CANDIDATE,)
    attributes = tuple(str(a) for a in meta.get("sensitive") or [])
    delta_l2 = sensitivity(len(models), len(attributes))
    sigma = calibrate_sigma(ev.epsilon, budget.delta, delta_l2)
    mech = DpSgdMechanism(noise_multiplier=sigma / delta_l2, sample_rate=1.0, steps=1)
    domain = str((meta.get("pseudonymisation") or {}).get("domain") or dataset)
    one = enforced_epsilon(mech, 1, budget, domain)
    if exceeds(one, cap):
        raise UsageError(
            f"evaluation.epsilon: one release (ε={ev.epsilon:g} at δ={budget.delta:g}) costs "
            f"ε={one:.4f} under the enforced {budget.mode_for(domain)} rule, over the test "
            f"blocks' cap {cap:g}: the evaluation budget cannot afford one gate"
        )
    check_useful(
        sigma=sigma,
        bins=ev.bins,
        eta=ev.eta,
        min_group_size=policy.policy.fairness.min_group_size,
    )
    registered = {b.block: b for b in ledger.blocks(dataset)}
    present = set(np.unique(test.block).tolist())
    source = [b for b in sorted(meta.get("test_blocks") or {}) if b in present]
    active = [
        b
        for b in source
        if not (evaluation_block(b) in registered and registered[evaluation_block(b)].retired)
    ]
    if not active:
        raise Refused(
            f"dataset {dataset!r}: every test block is retired (spent by earlier DP-evaluated "
            "releases) or the test split is empty: fresh test data is needed (prepare or "
            "ingest new patients)"
        )
    names = [evaluation_block(b) for b in active]
    charged = [ledger.block_status(dataset, t, budget).charges for t in names if t in registered]
    plan = EvaluationPlan(
        epsilon=float(ev.epsilon),
        delta=float(budget.delta),
        bins=int(ev.bins),
        eta=float(ev.eta),
        models=models,
        attributes=attributes,
        sensitivity=delta_l2,
        sigma=sigma,
        mechanism=mech,
        enforced_epsilon=one,
        cap=cap,
        test_blocks=tuple(names),
        source_blocks=tuple(active),
        attempt=1 + max(charged, default=0),
        domain=domain,
    )
    return plan, subset(test, np.isin(test.block, active))


def reserve_evaluation(
    plan: EvaluationPlan,
    test: Arrays,
    *,
    ledger: Ledger,
    dataset: str,
    budget: Budget,
    policy_sha256: str,
    data_version: str,
) -> Reservation:
    """Register the test blocks the ledger lacks, then reserve the release on all of them
    under the cap (:class:`~dpgov.errors.Refused` with nothing charged when they cannot
    afford it)."""
    known = {b.block for b in ledger.blocks(dataset)}
    for src, name in zip(plan.source_blocks, plan.test_blocks, strict=True):
        if name in known:
            continue
        members = sorted(set(test.patient_id[test.block == src].tolist()))
        ledger.add_block(
            dataset=dataset,
            block=name,
            patients=len(members),
            data_version=data_version,
            members=members,
            domain=plan.domain,
            split=TEST_SPLIT,
        )
    capped = budget.model_copy(update={"epsilon_per_block": plan.cap})
    return ledger.reserve(
        dataset=dataset,
        blocks=list(plan.test_blocks),
        mechanism=plan.mechanism,
        budget=capped,
        policy_sha256=policy_sha256,
        data_version=data_version,
    )


def draw(
    plan: EvaluationPlan,
    test: Arrays,
    scores: dict[str, Any],
    *,
    threshold: float,
    reservation: Reservation,
    ledger: Ledger,
    dataset: str,
    budget: Budget,
    run_id: str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> PrivateEvaluation:
    """Draw the release once, commit its reservation, retire the test blocks it spent.
    ``groups``: each attribute's subgroups as the contract declares them (prepared data's
    ``sensitive_groups``), so the release has one histogram per declared subgroup whether or
    not the test split holds it."""
    if tuple(scores) != plan.models:
        raise UsageError(f"the release plans models {list(plan.models)}, got {list(scores)}")
    pe = release(
        test.y,
        scores,
        test.sensitive,
        threshold=threshold,
        epsilon=plan.epsilon,
        delta=plan.delta,
        bins=plan.bins,
        attempt=plan.attempt,
        test_blocks=list(plan.test_blocks),
        reservation_id=reservation.id,
        groups=groups,
    )
    if evaluation_mechanism(pe) != reservation.mechanism:
        raise RuntimeError(  # never released: the charge stands, nothing is recorded
            f"the release's mechanism {evaluation_mechanism(pe)} is not the one reserved "
            f"({reservation.mechanism})"
        )
    ledger.commit(reservation.id, steps=1, run_id=run_id)
    retire_spent(plan, ledger=ledger, dataset=dataset, budget=budget)
    return pe


def retire_spent(
    plan: EvaluationPlan, *, ledger: Ledger, dataset: str, budget: Budget
) -> list[str]:
    """Retire each test block of ``plan`` on which one more release like this one would pass
    its cap (its k charges taken as k releases of this mechanism: the ledger's reservation
    decides exactly, this only stops planning on a block that is spent). Returns them."""
    retired = []
    for name in plan.test_blocks:
        status = ledger.block_status(dataset, name, budget)
        if status.retired:
            continue
        after = enforced_epsilon(plan.mechanism, status.charges + 1, budget, plan.domain)
        if exceeds(after, plan.cap):
            ledger.retire_block(dataset=dataset, block=name, reason=RETIRE_REASON)
            retired.append(name)
    return retired


def settle_evaluation(
    ledger: Ledger, reservation: Reservation | None, err: BaseException, *, drawn: bool
) -> None:
    """After a failure: a pending release reservation is returned when no noise can have been
    drawn (``drawn`` False: the training reservation right after it was refused), otherwise
    aborted (it stays fully charged: conservative). Best effort while ``err`` propagates."""
    if reservation is None:
        return
    why = reason(err)

    def settle() -> None:
        if ledger.reservation(reservation.id).status != "pending":
            return
        if drawn:
            ledger.abort(reservation.id, reason=f"the run failed before its release: {why}")
        else:
            ledger.release(reservation.id, reason=f"no noise drawn: {why}")

    quiet(settle)


def checks_of(plan_or_pe: Any) -> int:
    """The checks one release's η is split over when its metrics are recorded: AUROC,
    calibration, accuracy, and per attribute the AUROC and FNR gaps."""
    return 3 + 2 * len(plan_or_pe.attributes)


def recorded_eta(pe: PrivateEvaluation, eta: float) -> float:
    """η per check of the intervals recorded with a run (MLflow, facts' metrics, summary):
    :func:`~dpgov.gate.dp_metrics.eta_per_check` over :func:`checks_of` at the release's
    attempt. The gate recomputes its own from the record (D2)."""
    return eta_per_check(eta, checks_of(pe), pe.attempt)


def metrics_of(pe: PrivateEvaluation, model: str, *, eta: float, policy: LoadedPolicy) -> DPMetrics:
    """The metrics of ``model`` in ``pe`` at :func:`recorded_eta`, the policy's subgroup rule."""
    rule = rule_of(policy.policy.fairness)
    return dp_metrics(
        pe,
        model=model,
        eta_check=recorded_eta(pe, eta),
        min_group_n=rule.min_size,
        min_group_positives=rule.min_positives,
    )
