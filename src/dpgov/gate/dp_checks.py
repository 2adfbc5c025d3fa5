"""Gate checks on a DP-evaluated release (issue 17): ``judge_on: dp_interval``.

Under ``evaluation.private: true`` the candidate's test metrics are not the numbers in its
facts: the gate recomputes them from the release recorded in ``facts.private_evaluation``
(:func:`dpgov.gate.dp_metrics.dp_metrics`, post-processing of the noisy histograms: no noise is
ever drawn here, so ``gate``, ``promote`` and ``gate --preview`` give identical figures) and
judges every floor on a lower bound and every ceiling on an upper bound:

- ``auroc``: the candidate's AUROC lower bound ≥ ``utility.min_auroc``;
- ``calibration_error``: the candidate's ECE upper bound ≤ ``utility.max_calibration_error``;
- ``auroc_drop``: the reference's AUROC upper bound minus the candidate's lower bound ≤
  ``utility.max_auroc_drop`` (both from the same release: an upper bound on the true drop);
- ``auroc_gap:A`` / ``fnr_gap:A``: the gap's upper bound ≤ the limit;
- ``*_gap_widening:A``: the candidate gap's upper bound minus the reference gap's lower bound
  ≤ the limit (an upper bound on the true widening), both over the candidate's judged
  subgroups (the models' noisy counts are independent and may judge different ones:
  :func:`_reference_lo_over`).

η (``evaluation.eta``) is the release's false-accept probability. Attempt k on the same test
blocks gets η·6/(π²k²) (the shares sum to η over all attempts) and splits it evenly over the
*bounds* the gate judges (Bonferroni): a false accept needs at least one judged bound to be
wrong, so a release's checks together fail with probability at most η. The bounds are counted
from the policy and the release's layout alone (never from the data): the candidate's AUROC
lower bound (the floor and the drop share it), its ECE upper bound, the reference's AUROC
upper bound, and per attribute and metric the candidate gap's upper bound (the gap and the
widening share it) and the reference gap's lower bound. Each bound of
:func:`~dpgov.gate.dp_metrics.dp_metrics` holds at the ``eta_check`` it is computed at (a gap's
bounds at η together, over its subgroups). See docs/gate.md, "DP-evaluated releases".

Two more lines under a private policy: ``dp_evaluation`` (the release is recorded, its layout
is the mechanism's, its ε at δ is within ``evaluation.epsilon`` and the ledger charged it to
its test blocks) and ``test_budget:DATASET/BLOCK`` per test block (within its cap; a retired
block says that fresh test data is needed before another release).

Pure, like :mod:`dpgov.gate.decision`: what the ledger says arrives in
:class:`EvaluationLedgerFacts` (:func:`dpgov.gate.service.collect_ledger_facts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from dpgov.contracts import show_spent, within
from dpgov.gate.dp_facts import MECHANISM_GAUSSIAN_HISTOGRAMS, PrivateEvaluation
from dpgov.gate.dp_metrics import DPMetrics, dp_metrics, eta_per_check, gap_key, subgroup_key
from dpgov.gate.facts import CandidateFacts, Gap
from dpgov.gate.noise import SECRET_SOURCES
from dpgov.policy.schema import Policy

# the models of a release (the names dpgov.training.private_eval gives them)
CANDIDATE = "candidate"
REFERENCE = "reference"

# a gate line: (name, observed, limit, passed, reason, noise_scale, eta_check): the fields of
# dpgov.gate.decision.Check
Line = tuple[str, Any, Any, bool, str, float | None, float | None]
Metric = Literal["auroc", "fnr"]
LABEL = {"auroc": "AUROC", "fnr": "FNR"}
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


@dataclass(frozen=True)
class Judged:
    """The metrics a gate judges, recomputed from the release."""

    candidate: DPMetrics
    reference: DPMetrics | None
    eta_check: float
    pe: PrivateEvaluation | None = None  # the release (for bounds over chosen subgroups)


def _recompute(policy: Policy, pe: PrivateEvaluation, bounds: int) -> Judged:
    eta_check = eta_per_check(policy.evaluation.eta, max(1, bounds), pe.attempt)
    f = policy.fairness

    def of(model: str) -> DPMetrics:
        return dp_metrics(
            pe,
            model=model,
            eta_check=eta_check,
            min_group_n=f.min_group_size,
            min_group_positives=f.min_group_positives,
        )

    ref = of(REFERENCE) if REFERENCE in pe.models and policy.release.allow_reference else None
    return Judged(candidate=of(CANDIDATE), reference=ref, eta_check=eta_check, pe=pe)


def _layout_problem(policy: Policy, pe: PrivateEvaluation) -> str | None:
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
    problem = _layout_problem(policy, pe)
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


# ----------------------------------------------------------------------- the metric checks


def _missing(name: str, limit: Any, why: str) -> Line:
    return (name, None, limit, False, why, None, None)


def utility_lines(policy: Policy, judged: Judged | str) -> tuple[list[Line], Line]:
    """The ``auroc`` and ``calibration_error`` lines, and the ``auroc_drop`` line, judged on
    the release's bounds (``judged``: :func:`judge`'s answer)."""
    u = policy.utility
    if isinstance(judged, str):
        lines = [
            ("auroc", None, u.min_auroc, True, "off in policy", None, None)
            if u.min_auroc is None
            else _missing("auroc", u.min_auroc, judged),
            ("calibration_error", None, None, True, "off in policy", None, None)
            if u.max_calibration_error is None
            else _missing("calibration_error", u.max_calibration_error, judged),
        ]
        return lines, _drop_line(policy, None, judged)
    c, eta = judged.candidate, judged.eta_check
    out: list[Line] = []
    if u.min_auroc is None:
        out.append(("auroc", c.auroc, None, True, "off in policy", None, None))
    elif c.auroc_lo is None:
        out.append(_missing("auroc", u.min_auroc, "the release defines no AUROC (one class)"))
    else:
        ok = c.auroc_lo >= u.min_auroc
        out.append(
            (
                "auroc",
                c.auroc_lo,
                u.min_auroc,
                ok,
                f"DP AUROC lower bound {c.auroc_lo:.4f} (estimate {c.auroc:.4f}) "
                f"{'meets' if ok else 'below'} the floor {u.min_auroc:g}",
                c.noise_scale.get("auroc"),
                eta,
            )
        )
    if u.max_calibration_error is None:
        out.append(
            ("calibration_error", c.calibration_error, None, True, "off in policy", None, None)
        )
    elif c.calibration_error_hi is None or c.calibration_error is None:
        out.append(
            _missing("calibration_error", u.max_calibration_error, "the release defines no ECE")
        )
    else:
        limit = u.max_calibration_error
        ok = c.calibration_error_hi <= limit
        out.append(
            (
                "calibration_error",
                c.calibration_error_hi,
                limit,
                ok,
                f"DP ECE upper bound {c.calibration_error_hi:.4f} (estimate "
                f"{c.calibration_error:.4f}) {'within' if ok else 'over'} the limit {limit:g}",
                c.noise_scale.get("calibration_error"),
                eta,
            )
        )
    return out, _drop_line(policy, judged, None)


def judge(policy: Policy, facts: CandidateFacts) -> Judged | str:
    """The metrics the gate judges, recomputed from the facts' release at η per bound, or
    why there are none (the reason every DP line then gives)."""
    pe: PrivateEvaluation | None = facts.private_evaluation
    if pe is None:
        return "policy judges DP-evaluated bounds; the facts record no DP-evaluated release"
    problem = _layout_problem(policy, pe)
    if problem is not None:
        return f"release not judgeable: {problem}"
    return _recompute(policy, pe, len(judged_bounds(policy, pe.models)))


def _drop_line(policy: Policy, judged: Judged | None, why: str | None) -> Line:
    limit = policy.utility.max_auroc_drop
    if limit is None:
        return ("auroc_drop", None, None, True, "off in policy", None, None)
    if not policy.release.allow_reference:
        return (
            "auroc_drop",
            None,
            None,
            True,
            "off: the policy allows no non-private reference (release.allow_reference: false)",
            None,
            None,
        )
    if judged is None:
        return _missing("auroc_drop", limit, why or "no DP-evaluated release")
    if judged.reference is None:
        return (
            "auroc_drop",
            None,
            None,
            True,
            "off: no non-private reference was evaluated in this release",
            None,
            None,
        )
    c, r = judged.candidate, judged.reference
    if c.auroc_lo is None or r.auroc_hi is None:
        return _missing("auroc_drop", limit, "the release defines no AUROC of both models")
    drop = r.auroc_hi - c.auroc_lo
    ok = drop <= limit
    scale = math.hypot(c.noise_scale.get("auroc", 0.0), r.noise_scale.get("auroc", 0.0))
    return (
        "auroc_drop",
        drop,
        limit,
        ok,
        f"reference AUROC upper bound {r.auroc_hi:.4f} minus the candidate's lower bound "
        f"{c.auroc_lo:.4f}: a drop of at most {drop:+.4f}, {'within' if ok else 'over'} "
        f"{limit:g}",
        scale,
        judged.eta_check,
    )


def _gap(m: DPMetrics, attribute: str, metric: str) -> Gap | None:
    return next((g for g in m.gaps if g.attribute == attribute and g.metric == metric), None)


def fairness_lines(policy: Policy, judged: Judged | str) -> list[Line]:
    """The ``*_gap:A`` and ``*_gap_widening:A`` lines judged on the release's bounds (the
    widening lines are turned off afterwards where the policy forbids the reference, like
    the exact-metric ones: :func:`dpgov.gate.reference.confine_reference`)."""
    f = policy.fairness
    out: list[Line] = []
    limits = {
        "auroc": (f.max_auroc_gap, f.max_auroc_gap_widening),
        "fnr": (f.max_fnr_gap, f.max_fnr_gap_widening),
    }
    for attribute in f.sensitive_attributes:
        for metric in ("auroc", "fnr"):
            max_gap, max_widening = limits[metric]
            name, wname = f"{metric}_gap:{attribute}", f"{metric}_gap_widening:{attribute}"
            if isinstance(judged, str):
                for n, lim in ((name, max_gap), (wname, max_widening)):
                    out.append(
                        (n, None, None, True, "off in policy", None, None)
                        if lim is None
                        else _missing(n, lim, judged)
                    )
                continue
            out += _gap_pair(policy, judged, attribute, metric, name, wname)
    return out


def _gap_pair(
    policy: Policy, judged: Judged, attribute: str, metric: str, name: str, wname: str
) -> list[Line]:
    f = policy.fairness
    max_gap, max_widening = (
        (f.max_auroc_gap, f.max_auroc_gap_widening)
        if metric == "auroc"
        else (f.max_fnr_gap, f.max_fnr_gap_widening)
    )
    c, eta = judged.candidate, judged.eta_check
    gap = _gap(c, attribute, metric)
    scale = c.noise_scale.get(gap_key(attribute, metric))
    if gap is None or gap.hi is None or gap.groups_judged < 2:
        count = gap.groups_judged if gap is not None else 0
        why = (
            f"only {count} subgroup(s) of {attribute!r} have >= {f.min_group_size} patients "
            f"and >= {f.min_group_positives} positives (noisy counts) with a {LABEL[metric]}"
        )
        passed = not f.require_judgeable
        suffix = "" if passed else " (policy requires a judgeable gap)"
        return [
            (n, None, None, True, "off in policy", None, None)
            if lim is None
            else (n, None, lim, passed, f"not judged: {why}{suffix}", None, eta)
            for n, lim in ((name, max_gap), (wname, max_widening))
        ]
    out: list[Line] = []
    groups = f"{gap.groups_judged} subgroups"
    if max_gap is None:
        out.append((name, gap.hi, None, True, "off in policy", scale, eta))
    else:
        ok = gap.hi <= max_gap
        out.append(
            (
                name,
                gap.hi,
                max_gap,
                ok,
                f"DP {LABEL[metric]} gap upper bound {gap.hi:.4f} (estimate {gap.gap:.4f}, "
                f"{groups}) {'within' if ok else 'over'} {max_gap:g}",
                scale,
                eta,
            )
        )
    if max_widening is None:
        out.append((wname, None, None, True, "off in policy", None, None))
        return out
    if judged.reference is None:
        out.append(
            (wname, None, max_widening, False, "no non-private reference in the release", None, eta)
        )
        return out
    ref = _gap(judged.reference, attribute, metric)
    names = list(gap.groups or [])
    if ref is not None and ref.lo is not None and sorted(ref.groups or []) == sorted(names):
        ref_lo: float | None = ref.lo
        ref_scale = judged.reference.noise_scale.get(gap_key(attribute, metric))
        over = "the same subgroups"
    else:  # the reference's noisy counts judged other subgroups: bound it over the candidate's
        ref_lo, ref_scale = _reference_lo_over(judged, attribute, metric, names)
        over = f"the candidate's subgroups ({', '.join(names)})"
    if ref_lo is None:
        out.append(
            (
                wname,
                None,
                max_widening,
                False,
                f"the reference has no {LABEL[metric]} bounds over the candidate's subgroups of "
                f"{attribute!r} ({', '.join(names)}) in the release",
                None,
                eta,
            )
        )
        return out
    widening = gap.hi - ref_lo
    ok = widening <= max_widening
    both = math.hypot(scale or 0.0, ref_scale or 0.0) if scale or ref_scale else None
    out.append(
        (
            wname,
            widening,
            max_widening,
            ok,
            f"gap upper bound {gap.hi:.4f} minus the reference's lower bound {ref_lo:.4f} over "
            f"{over}: widened by at most {widening:+.4f}, {'within' if ok else 'over'} "
            f"{max_widening:g}",
            both,
            eta,
        )
    )
    return out


def _reference_lo_over(
    judged: Judged, attribute: str, metric: str, groups: list[str]
) -> tuple[float | None, float | None]:
    """A lower bound at ``eta_check`` on the reference's gap over ``groups`` (the candidate's
    judged subgroups), and its noise scale: the two models' noisy counts are independent
    draws, so the subgroups each judges can differ while the widening compares gaps over the
    same subgroups. The gap over k subgroups is at least ``max lo − min hi`` whenever all 2k
    one-sided subgroup bounds hold; each is taken at ``eta_check / (2k)`` (Bonferroni), so the
    bound fails with probability at most ``eta_check``. (When both models judged the same
    subgroups, :func:`~dpgov.gate.dp_metrics.dp_metrics`'s own pairwise bound is used.)"""
    k = len(groups)
    if judged.pe is None or k < 2:
        return None, None
    m = dp_metrics(
        judged.pe,
        model=REFERENCE,
        eta_check=judged.eta_check / (2 * k),
        min_group_n=0,
        min_group_positives=0,
    )
    rows = {g.group: g for g in m.subgroups if g.attribute == attribute}
    los, his, points = [], [], {}
    for name in groups:
        row = rows.get(name)
        if row is None:
            return None, None
        value, lo, hi = (
            (row.auroc, row.auroc_lo, row.auroc_hi)
            if metric == "auroc"
            else (row.fnr, row.fnr_lo, row.fnr_hi)
        )
        if value is None or lo is None or hi is None:
            return None, None
        los.append(lo)
        his.append(hi)
        points[name] = value
    top, bottom = max(points, key=points.__getitem__), min(points, key=points.__getitem__)
    scales = [m.noise_scale.get(subgroup_key(attribute, g, metric), 0.0) for g in (top, bottom)]
    return max(0.0, max(los) - min(his)), math.hypot(*scales)


__all__ = [
    "CANDIDATE",
    "FRESH_TEST_DATA",
    "REFERENCE",
    "RELEASE_ACCOUNTANT",
    "EvalBlockFacts",
    "EvaluationLedgerFacts",
    "EvaluationSummary",
    "Judged",
    "Line",
    "evaluation_lines",
    "fairness_lines",
    "judge",
    "judged_bounds",
    "utility_lines",
]
