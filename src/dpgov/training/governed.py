"""One governed run: validate → plan → reserve → train → commit → evaluate → track → gate.

:func:`run_governed` is the only place this sequence is written. ``dpgov run``, the demo,
retraining, sweep trials (gate and registration off, validation on), the Prefect flows (each
step a task, through a :class:`StepRunner`), the benchmarks and the tests all call it. The
rules it keeps:

- **validate** first: dpgov trains only on data that passed its contract (a recorded passing
  validation of this exact data version, contract and policy is reused). A failing validation
  is a refusal (exit 1) and nothing is reserved.
- **plan** checks everything that can be checked before budget moves; nothing is written.
- **reserve** charges the planned mechanism to every block atomically; no training without it.
  Under ``release.require_empirical_audit`` the candidate's empirical audit is reserved right
  after it (step ``reserve-audit``, :mod:`dpgov.training.prepaid_audit`): refused, the run's
  reservation is released, nothing charged; a training failure returns it too.
  With ``evaluation.private`` the DP-evaluated release is reserved on the test blocks first
  (step ``reserve-evaluation``): a release they cannot afford is refused with nothing charged,
  and a training reservation refused after it returns it (no noise drawn); from training on it
  stays charged, and ``evaluate`` draws it once and commits it.
- **train** settles the ledger when it fails (release if no step ran, else abort: charged).
- **commit** replaces the plan with the steps actually taken.
- a failure after the commit (evaluate, track, gate) leaves the charge and marks the MLflow
  run FAILED (:mod:`dpgov.training.settle`, written once).

A step runner decides how each step runs: :func:`call_step` calls it directly; the Prefect
flows wrap each as a task (``pipelines.steps``), with retries only for steps that cannot
spend privacy or record twice (:data:`RETRYABLE`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dpgov.data.validation.ensure import ensure_validated
from dpgov.errors import UsageError
from dpgov.gate.in_force import policy_in_force
from dpgov.gate.service import run_gate
from dpgov.tracking.registry import Registry
from dpgov.training.budget_warning import low_budget_warning
from dpgov.training.inputs import load_data
from dpgov.training.membership_attack import attack_run
from dpgov.training.params import data_params, prepared_path
from dpgov.training.planning import plan
from dpgov.training.prepaid_audit import TAG_AUDIT_RESERVATION, release_unused
from dpgov.training.private_eval import settle_evaluation
from dpgov.training.retraining import budget_rows
from dpgov.training.settle import end_failed_run
from dpgov.training.steps import (
    commit,
    evaluate,
    reserve,
    reserve_audit,
    reserve_evaluation,
    train,
)
from dpgov.training.track import track

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.data.validation.ensure import Validated
    from dpgov.ledger import Ledger, Reservation
    from dpgov.policy import LoadedPolicy
    from dpgov.training.evaluate import Evaluation
    from dpgov.training.params import RunParams
    from dpgov.training.steps import EvalOutcome

T = TypeVar("T")

STEPS = (
    "validate",
    "load-data",
    "plan",
    "reserve",
    "train",
    "commit",
    "evaluate",
    "membership-attack",
    "track",
    "budgets",
    "gate",
)
"""The steps in order (``gate`` only when asked and a version was registered,
``membership-attack`` only with ``train.membership_attack``)."""

RETRYABLE = frozenset({"validate", "load-data", "budgets", "gate"})
"""Steps that may run again after a transient error: they read, validate, or record a gate
decision that a rerun records again truthfully. Planning, reserving, training, committing,
evaluating (it trains the reference) and tracking never retry: a retry could spend privacy or
record twice."""


class StepRunner(Protocol):
    """Runs one named step of the sequence: ``runner(name, fn, *args, retry=..., **kwargs)``.

    ``retry`` is True only for steps that may safely run again after a transient error
    (reading, validating, the gate); never for a step that spends privacy or records.
    """

    def __call__(
        self, name: str, fn: Callable[..., T], /, *args: Any, retry: bool = False, **kwargs: Any
    ) -> T: ...


def call_step(
    name: str, fn: Callable[..., T], /, *args: Any, retry: bool = False, **kwargs: Any
) -> T:
    """The plain runner: call the step."""
    return fn(*args, **kwargs)


@dataclass(frozen=True)
class RunOptions:
    """How one governed run is carried out (what it trains is in the params and policy).

    ``gate``: evaluate and record the gate for the new candidate. ``register``: log the model
    and register a candidate version (off for sweep trials: studies, not candidates).
    ``validation_out``: where a new validation is written (default
    ``data/validation/<dataset>``). ``parent_run_id``: nest the MLflow runs under another (a
    sweep); ``train_tags`` / ``reference_tags``: added to the private / reference run's tags.
    """

    gate: bool = True
    register: bool = True
    validation_out: str | None = None
    progress: bool = False
    on_step: Callable[[int, float], None] | None = None
    parent_run_id: str | None = None
    train_tags: dict[str, str] | None = None
    reference_tags: dict[str, str] | None = None


@dataclass
class RunSummary:
    """What one governed run did; :meth:`to_dict` is the JSON of ``dpgov run --json``."""

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
    validation: dict[str, Any]
    training_loop_seconds: float
    reference_loop_seconds: float
    budgets: list[dict[str, Any]]
    gate: dict[str, Any] | None
    seconds: float
    timings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # what the demo prepared and versioned
    release: dict[str, Any] | None = None  # the demo's release: policy, approval, promotion, audit
    warnings: list[str] = field(default_factory=list)  # e.g. calibration left no useful model
    private_evaluation: dict[str, Any] | None = None  # the DP-evaluated release, when private
    membership: dict[str, Any] | None = None  # train.membership_attack: non-private figures
    # release.require_empirical_audit: the reservation prepaid for the candidate's audit
    audit_reservation: str | None = None
    # in-process only (not in to_dict): the evaluations themselves, for a sweep's summary
    evaluation: Evaluation | None = field(default=None, repr=False, compare=False)
    reference_evaluation: Evaluation | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("evaluation", None)
        out.pop("reference_evaluation", None)
        if out["data"] is None:
            out.pop("data")
        if out["release"] is None:
            out.pop("release")
        if out["membership"] is None:
            out.pop("membership")
        if out["audit_reservation"] is None:
            out.pop("audit_reservation")
        return out


def run_governed(
    params: RunParams,
    policy: LoadedPolicy | None = None,
    *,
    ledger: Ledger,
    options: RunOptions | None = None,
    step: StepRunner = call_step,
) -> RunSummary:
    """Validate, plan, reserve, train, commit, evaluate, track, gate: one governed run.

    The data is ``train.data`` (else ``data/prepared/<data.dataset>``), validated against the
    ``data:`` section's source and contract before anything else. Bad input raises
    :class:`~dpgov.errors.UsageError` (exit 2) and a refusal :class:`~dpgov.errors.Refused`
    (exit 1), in both cases with nothing charged unless the reservation was already made.
    """
    opts = options or RunOptions()
    started = time.perf_counter()
    policy = enforced_policy(ledger, params, policy)

    def run(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return step(name, fn, *args, retry=name in RETRYABLE, **kwargs)

    validated: Validated = run(
        "validate", validate_for, params, policy, validation_out=opts.validation_out
    )
    data, version = run("load-data", load_data, str(prepared_path(params)))
    p = run(
        "plan",
        plan,
        params,
        policy,
        data,
        ledger=ledger,
        data_version=version,
        prepay_audit=opts.register,  # an audit needs a registered candidate
    )
    evaluation = None  # the DP-evaluated release's reservation (evaluation.private)
    if p.evaluation is not None:
        evaluation = run("reserve-evaluation", reserve_evaluation, p, ledger=ledger)
    try:
        reservation = run("reserve", reserve, p, ledger=ledger)
        if p.audit_prepaid:  # the candidate's empirical audit, prepaid (both or neither)
            p = replace(
                p,
                audit_reservation=run(
                    "reserve-audit", reserve_audit, p, reservation, ledger=ledger
                ),
            )
    except BaseException as err:  # nothing was drawn: the evaluation's charge is returned
        settle_evaluation(ledger, evaluation, err, drawn=False)
        raise
    train_tags = dict(opts.train_tags or {})
    if p.audit_reservation is not None:
        train_tags[TAG_AUDIT_RESERVATION] = p.audit_reservation.id
    try:
        outcome = run(
            "train",
            train,
            p,
            reservation,
            ledger=ledger,
            progress=opts.progress,
            on_step=opts.on_step,
            parent_run_id=opts.parent_run_id,
            tags=train_tags or None,
        )
    except BaseException as err:
        settle_evaluation(ledger, evaluation, err, drawn=True)  # conservative: stays charged
        release_unused(ledger, p.audit_reservation, err)  # no audit ran, no candidate left
        raise
    try:  # the ledger keeps the charge from here on; MLflow shows a failure
        entry = run("commit", commit, reservation, outcome, ledger=ledger)
        evals = run(
            "evaluate",
            evaluate,
            p,
            outcome,
            progress=opts.progress,
            ledger=ledger,
            evaluation_reservation=evaluation,
        )
        attack = None  # before track: the reference model is discarded after the run
        if p.params.train.membership_attack:
            attack = run("membership-attack", attack_run, p, outcome, evals)
        tracked = run(
            "track",
            track,
            p,
            reservation,
            outcome,
            entry,
            evals,
            ledger=ledger,
            register=opts.register,
            parent_run_id=opts.parent_run_id,
            tags=opts.reference_tags,
            evaluation_reservation=evaluation,
            membership=attack,
        )
    except BaseException as err:
        settle_evaluation(ledger, evaluation, err, drawn=True)
        end_failed_run(outcome.run_id, err)
        raise
    budgets = run("budgets", _budgets, ledger, policy, p.dataset)
    gate = None
    if opts.gate and tracked.model_version:
        gate = run("gate", gate_now, tracked.model_name, tracked.model_version, policy, ledger)
    ref = evals.reference
    low = low_budget_warning(
        calibrated=p.calibrated,
        epsilon_run=float(tracked.facts["epsilon"]),
        target_epsilon=p.target_epsilon,
        noise_multiplier=p.noise_multiplier,
        blocks=p.blocks,
        budgets=budgets,
    )
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
        validation=validated.to_dict(),
        training_loop_seconds=float(sum(outcome.result.epoch_seconds)),
        reference_loop_seconds=(
            float(sum(evals.reference_result.epoch_seconds))
            if evals.reference_result is not None
            else 0.0
        ),
        budgets=budgets,
        gate=gate,
        seconds=time.perf_counter() - started,
        evaluation=evals.private,
        reference_evaluation=ref,
        warnings=[low] if low else [],
        private_evaluation=_release_summary(evals, evaluation),
        membership=attack.to_dict() if attack is not None else None,
        audit_reservation=p.audit_reservation.id if p.audit_reservation else None,
    )


def _release_summary(evals: EvalOutcome, res: Reservation | None) -> dict[str, Any] | None:
    """The DP-evaluated release in the run summary (None when the test metrics are exact)."""
    pe = evals.release
    if pe is None or res is None:
        return None
    return {
        "reservation": res.id,
        "ledger_entry": res.seq,
        "epsilon": pe.epsilon,
        "delta": pe.delta,
        "sigma": pe.sigma,
        "noise_multiplier": pe.noise_multiplier,
        "models": list(pe.models),
        "test_blocks": list(pe.test_blocks),
        "attempt": pe.attempt,
        "eta_check": evals.eta_check,
    }


def enforced_policy(
    ledger: Ledger, params: RunParams, policy: LoadedPolicy | None = None
) -> LoadedPolicy:
    """The policy in force on ``ledger`` for the run's dataset (:mod:`dpgov.gate.in_force`):
    what a run enforces, and records. ``policy``, when given, must say what that policy says
    (else UsageError, nothing charged): no caller chooses another."""
    dataset = run_dataset(params)
    in_force = policy_in_force(ledger, dataset)
    if policy is not None and policy.policy != in_force.policy:
        raise UsageError(
            f"policy {policy.path} (sha256 {policy.sha256[:12]}…) is not the policy in force "
            f"for dataset {dataset} (sha256 {in_force.sha256[:12]}…): a run enforces the policy "
            f"in force; change it with `dpgov policy set FILE --reason TEXT`"
        )
    return in_force


def run_dataset(params: RunParams) -> str:
    """The dataset a run trains on: its prepared data's (what the plan charges), else the
    ``data.dataset`` of its params."""
    meta = prepared_path(params) / "meta.json"
    try:
        found = json.loads(meta.read_text(encoding="utf-8")).get("dataset")
    except (OSError, ValueError, AttributeError):
        found = None
    return str(found or (params.data or {}).get("dataset") or "flchain")


def validate_for(
    params: RunParams, policy: LoadedPolicy, *, validation_out: str | None = None
) -> Validated:
    """The validate step: a passing validation of the run's data (``train.data``) against the
    ``data:`` section's source and contract and the policy; :class:`~dpgov.errors.Refused`
    when it fails, before anything is reserved."""
    return ensure_validated(
        str(prepared_path(params)),
        data_params=data_params(params),
        policy=policy,
        out=validation_out,
    )


def _budgets(ledger: Ledger, policy: LoadedPolicy, dataset: str) -> list[dict[str, Any]]:
    """The dataset's block budgets as table rows (spent rounded up, remaining down)."""
    return budget_rows(ledger.budget(policy.policy.budget, dataset=dataset))


def gate_now(model: str, version: str, policy: LoadedPolicy, ledger: Ledger) -> dict[str, Any]:
    """The gate now, recorded in the ledger; the decision with its ledger entry and policy."""
    result = run_gate(model, version, policy, ledger, Registry())
    seq = result.entry.seq if result.entry else None
    return {**result.decision.to_dict(), "ledger_seq": seq, "policy_path": str(policy.path)}
