"""A DP-evaluated release in the gate (issue 17): what the ledger says about it, its own
lines, and the η split.

Two lines under ``evaluation.private: true``, beside the metric checks of
:mod:`dpgov.gate.dp_checks`: ``dp_evaluation`` (the release is recorded, its layout is the
mechanism's, its noise was secret, its ε at δ is within ``evaluation.epsilon`` and the ledger
charged it, committed, to its test blocks) and ``test_budget:DATASET/BLOCK`` per test block
(within its cap; a retired block says that fresh test data is needed before another release).

η (``evaluation.eta``) is the release's false-accept probability. Attempt k on the same test
blocks gets η·6/(π²k²) (the shares sum to η over all attempts) and splits it evenly over the
*bounds* the gate judges (:func:`judged_bounds`, Bonferroni): a false accept needs at least one
judged bound to be wrong, so a release's checks together fail with probability at most η. The
bounds are counted from the policy and the release's layout alone (never from the data): the
candidate's AUROC lower bound (the floor and the drop share it), its ECE upper bound, the
reference's AUROC upper bound, and per attribute and metric the candidate gap's upper bound
(the gap and the widening share it) and the reference gap's lower bound. See docs/gate.md,
"DP-evaluated releases".

Pure, like :mod:`dpgov.gate.decision`: what the ledger says arrives in
:class:`EvaluationLedgerFacts` (:func:`dpgov.gate.service.collect_evaluation_facts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dpgov.contracts import show_spent, within
from dpgov.gate.dp_facts import MECHANISM_GAUSSIAN_HISTOGRAMS, PrivateEvaluation
from dpgov.gate.dp_metrics import eta_per_check
from dpgov.gate.facts import CandidateFacts
from dpgov.gate.noise import SECRET_SOURCES
from dpgov.policy.schema import Policy

# the models of a release (the names dpgov.training.private_eval gives them)
CANDIDATE = "candidate"
REFERENCE = "reference"
# a gate line: (name, observed, limit, passed, reason, noise_scale, eta_check): the fields of
# dpgov.gate.decision.Check
Line = tuple[str, Any, Any, bool, str, float | None, float | None]
# the accountant a release's own ε is recomputed with: for one Gaussian mechanism (q = 1,
# T = 1) the PLD is its exact privacy curve, the analytic Gaussian the release is calibrated to
# (docs/evaluation.md); RDP and PRV would overstate it. The ledger enforces its own rule.
RELEASE_ACCOUNTANT = "pld"
FRESH_TEST_DATA = "fresh test data is needed for another DP-evaluated release"


@dataclass(frozen=True)
class EvalBlockFacts:
    """What the ledger says now about one test block of a release (at the policy δ)."""

    dataset: str
    block: str
    epsilon_spent: float
    delta: float
    charges: int
    retired: bool
    split: str
    note: str = ""  # why the figures could not be read, when they could not


@dataclass(frozen=True)
class EvaluationLedgerFacts:
    """What the ledger says about a release: its reservation and its test blocks."""

    reservation_id: str | None = None
    reservation_state: str = "missing"  # committed | pending | released | aborted | missing
    reservation_dataset: str | None = None
    reservation_blocks: tuple[str, ...] | None = None
    release_epsilon: float | None = None  # ε of the mechanism charged, at the release's δ
    noise_multiplier: float | None = None  # of the mechanism charged
    blocks: tuple[EvalBlockFacts, ...] = ()

    def block(self, dataset: str, name: str) -> EvalBlockFacts | None:
        return next((b for b in self.blocks if (b.dataset, b.block) == (dataset, name)), None)


@dataclass(frozen=True)
class EvaluationSummary:
    """How a gate used a release: at what η per bound, over how many bounds, which attempt.

    ``bounds`` is the number of bounds judged (the Bonferroni split); ``eta_attempt`` the
    share of η of this attempt; ``eta_check`` each bound's failure probability."""

    private: bool
    recorded: bool
    eta: float
    bounds: int
    attempt: int | None = None
    eta_attempt: float | None = None
    eta_check: float | None = None
    epsilon: float | None = None
    delta: float | None = None
    test_blocks: tuple[str, ...] = ()
    reservation: str | None = None
    fresh_test_data_needed: bool = False
    blocks_retired: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "private": self.private,
            "recorded": self.recorded,
            "eta": self.eta,
            "bounds": self.bounds,
            "attempt": self.attempt,
            "eta_attempt": self.eta_attempt,
            "eta_check": self.eta_check,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "test_blocks": list(self.test_blocks),
            "reservation": self.reservation,
            "fresh_test_data_needed": self.fresh_test_data_needed,
            "blocks_retired": list(self.blocks_retired),
        }


def judged_bounds(policy: Policy, models: list[str] | tuple[str, ...]) -> list[str]:
    """The bounds a gate under ``policy`` judges on a release of ``models`` (module
    docstring), each named once: what η per attempt is split over."""
    u, f = policy.utility, policy.fairness
    reference = REFERENCE in models and policy.release.allow_reference
    out: list[str] = []

    def add(name: str) -> None:
        if name not in out:
            out.append(name)

    if u.min_auroc is not None:
        add("candidate.auroc.lo")
    if u.max_calibration_error is not None:
        add("candidate.calibration_error.hi")
    if u.max_auroc_drop is not None and reference:
        add("candidate.auroc.lo")
        add("reference.auroc.hi")
    for attribute in f.sensitive_attributes:
        for metric, max_gap, max_widening in (
            ("auroc", f.max_auroc_gap, f.max_auroc_gap_widening),
            ("fnr", f.max_fnr_gap, f.max_fnr_gap_widening),
        ):
            widening = max_widening is not None and reference
            if max_gap is not None or widening:
                add(f"candidate.gap.{attribute}.{metric}.hi")
            if widening:
                add(f"reference.gap.{attribute}.{metric}.lo")
    return out


def layout_problem(policy: Policy, pe: PrivateEvaluation) -> str | None:
    """Why ``pe`` is not a release of the documented mechanism the gate can judge, or None."""
    if pe.mechanism != MECHANISM_GAUSSIAN_HISTOGRAMS:
        return f"unknown evaluation mechanism {pe.mechanism!r}"
    if CANDIDATE not in pe.models:
        return f"the release holds no histograms of the candidate (models {pe.models})"
    missing = [a for a in policy.fairness.sensitive_attributes if a not in pe.attributes]
    if missing:
        return f"the release holds no histograms of the attribute(s) {', '.join(missing)}"
    need = math.sqrt(len(pe.models) * (1 + len(pe.attributes)))
    if not math.isclose(pe.sensitivity, need, rel_tol=1e-9):
        return (
            f"sensitivity {pe.sensitivity:g} recorded, the release's layout ({len(pe.models)} "
            f"model(s), {len(pe.attributes)} attribute(s)) has {need:g}"
        )
    if not math.isclose(pe.sigma, pe.noise_multiplier * pe.sensitivity, rel_tol=1e-9):
        return (
            f"σ={pe.sigma:g} is not the noise multiplier {pe.noise_multiplier:g} times the "
            f"sensitivity {pe.sensitivity:g}"
        )
    if pe.attempt < 1:
        return f"attempt {pe.attempt} (attempts count from 1)"
    return None


def evaluation_lines(
    policy: Policy, facts: CandidateFacts, led: EvaluationLedgerFacts | None
) -> tuple[list[Line], EvaluationSummary | None]:
    """The ``dp_evaluation`` and ``test_budget:*`` lines and the summary of the release
    (nothing under a policy that does not evaluate privately)."""
    ev = policy.evaluation
    if not ev.private:
        return [], None
    pe: PrivateEvaluation | None = facts.private_evaluation
    if pe is None:
        why = (
            "the non-private reference has no DP-evaluated release"
            if not facts.private
            else "evaluation.private is true but the facts record no DP-evaluated release "
            "(private_evaluation): its test metrics were not released under DP"
        )
        return [("dp_evaluation", None, ev.epsilon, False, why, None, None)], EvaluationSummary(
            private=True, recorded=False, eta=ev.eta, bounds=0
        )
    bounds = len(judged_bounds(policy, pe.models))
    eta_attempt = eta_per_check(ev.eta, 1, pe.attempt)
    lines: list[Line] = [_release_line(policy, facts, pe, led)]
    retired: list[str] = []
    cap = min(policy.budget.epsilon_per_block, ev.epsilon_per_block or math.inf)
    for name in pe.test_blocks:
        line, spent = _test_budget_line(facts.dataset, name, cap, led)
        lines.append(line)
        if spent:
            retired.append(name)
    summary = EvaluationSummary(
        private=True,
        recorded=True,
        eta=ev.eta,
        bounds=bounds,
        attempt=pe.attempt,
        eta_attempt=eta_attempt,
        eta_check=eta_attempt / bounds if bounds else None,
        epsilon=pe.epsilon,
        delta=pe.delta,
        test_blocks=tuple(pe.test_blocks),
        reservation=pe.reservation_id,
        fresh_test_data_needed=bool(retired),
        blocks_retired=tuple(retired),
    )
    return lines, summary


def _release_line(
    policy: Policy, facts: CandidateFacts, pe: PrivateEvaluation, led: EvaluationLedgerFacts | None
) -> Line:
    ev, name = policy.evaluation, "dp_evaluation"
    problem = layout_problem(policy, pe)
    if problem is not None:
        return (
            name,
            pe.epsilon,
            ev.epsilon,
            False,
            f"release not judgeable: {problem}",
            None,
            None,
        )
    if pe.delta > policy.budget.delta * (1 + 1e-12):
        return (
            name,
            pe.epsilon,
            ev.epsilon,
            False,
            f"the release's ε is stated at δ={pe.delta:g}, above budget.delta "
            f"{policy.budget.delta:g}",
            None,
            None,
        )
    if pe.noise_source not in SECRET_SOURCES and not policy.release.allow_reproducible_noise:
        return (
            name,
            pe.epsilon,
            ev.epsilon,
            False,
            f"the release's noise source is {pe.noise_source!r}: anyone who can read the run "
            "may regenerate its noise (release.allow_reproducible_noise is false)",
            None,
            None,
        )
    rid = pe.reservation_id
    if rid is None:
        return (
            name,
            pe.epsilon,
            ev.epsilon,
            False,
            "the release names no ledger charge",
            None,
            None,
        )
    if led is None or led.reservation_id != rid or led.reservation_state == "missing":
        return (
            name,
            pe.epsilon,
            ev.epsilon,
            False,
            f"the release's charge {rid} is not in the ledger",
            None,
            None,
        )
    if led.reservation_dataset is not None and led.reservation_dataset != facts.dataset:
        return (
            name,
            pe.epsilon,
            ev.epsilon,
            False,
            f"the release's charge {rid} is on dataset {led.reservation_dataset!r}, the model "
            f"names {facts.dataset!r}",
            None,
            None,
        )
    if led.reservation_blocks is not None and set(led.reservation_blocks) != set(pe.test_blocks):
        return (
            name,
            pe.epsilon,
            ev.epsilon,
            False,
            f"the release's charge {rid} is on blocks {sorted(led.reservation_blocks)}, the "
            f"release names test blocks {sorted(pe.test_blocks)}",
            None,
            None,
        )
    if led.noise_multiplier is not None and not math.isclose(
        led.noise_multiplier, pe.noise_multiplier, rel_tol=1e-9
    ):
        return (
            name,
            pe.epsilon,
            ev.epsilon,
            False,
            f"the ledger charged noise multiplier {led.noise_multiplier:g}, the release "
            f"recorded {pe.noise_multiplier:g}",
            None,
            None,
        )
    if led.reservation_state != "committed":
        return (
            name,
            led.reservation_state,
            "committed",
            False,
            f"the release's charge {rid} is {led.reservation_state} (never committed)",
            None,
            None,
        )
    claimed = [e for e in (pe.epsilon, led.release_epsilon) if e is not None]
    eps = max(claimed)
    source = (
        "ledger" if led.release_epsilon is not None and eps == led.release_epsilon else "release"
    )
    ok = within(eps, ev.epsilon)
    blocks = ", ".join(pe.test_blocks) or "none"
    return (
        name,
        eps,
        ev.epsilon,
        ok,
        f"attempt {pe.attempt} on test block(s) {blocks}: ε={show_spent(eps, 4)} ({source}) at "
        f"δ={pe.delta:g} {'within' if ok else 'over'} evaluation.epsilon {ev.epsilon:g}; "
        f"noisy histograms σ={pe.sigma:.4g} per count; charge {rid} committed",
        None,
        None,
    )


def _test_budget_line(
    dataset: str, name: str, cap: float, led: EvaluationLedgerFacts | None
) -> tuple[Line, bool]:
    """The line of one test block, and whether it is spent (retired: fresh data needed)."""
    check = f"test_budget:{dataset}/{name}"
    b = led.block(dataset, name) if led is not None else None
    if b is None:
        return (check, None, cap, False, "test block not in the ledger", None, None), False
    if b.note:
        return (check, None, cap, False, b.note, None, None), False
    if b.split != "test":
        return (
            check,
            b.epsilon_spent,
            cap,
            False,
            f"block {name} is a {b.split} block: a release is charged to test blocks only",
            None,
            None,
        ), False
    ok = within(b.epsilon_spent, cap)
    state = (
        f"retired: {FRESH_TEST_DATA}"
        if b.retired
        else "open for another release while its cap allows"
    )
    reason = (
        f"ε spent {show_spent(b.epsilon_spent, 4)} of the test cap {cap:g} at δ={b.delta:g} "
        f"over {b.charges} release(s)" + ("" if ok else ": over budget") + f"; {state}"
    )
    return (check, b.epsilon_spent, cap, ok, reason, None, None), b.retired


__all__ = [
    "CANDIDATE",
    "FRESH_TEST_DATA",
    "REFERENCE",
    "RELEASE_ACCOUNTANT",
    "EvalBlockFacts",
    "EvaluationLedgerFacts",
    "EvaluationSummary",
    "Line",
    "evaluation_lines",
    "judged_bounds",
    "layout_problem",
]
