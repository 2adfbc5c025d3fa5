"""The promotion gate: a pure function of (policy, candidate facts, ledger facts, approvals).

:func:`evaluate` returns a :class:`Decision` holding one :class:`Check` per line an approver
reads: its name, what was observed, the limit, whether it passed and why. Checks that policy
switches off still appear (passed, "off in policy") so nobody mistakes "not checked" for
"checked and fine". A decision allows promotion only when every check passes; the non-private
reference never passes.

Conventions (documented in policies/README.md and docs/gate.md):

* Privacy: the model's own ε at its own δ must be within ``release.max_epsilon`` and
  ``release.max_delta``; every block it trained on must be within its budget at the policy's δ,
  composed over every charge in the ledger at the moment of evaluation; its reservation must be
  committed; the ledger's hash chain must verify.
* Fairness gaps are largest minus smallest subgroup value over the subgroups of one attribute
  that hold at least ``min_group_size`` test patients and ``min_group_positives`` positives.
  The gap recorded by training is used when it was computed over exactly those subgroups;
  otherwise it is recomputed from the subgroup metrics, with a conservative interval
  ``[max(lo) - min(hi), max(hi) - min(lo)]`` when every subgroup has one. ``judge_on: interval``
  judges the upper bound of the gap's interval (the gap is within the limit with the interval's
  confidence); a missing interval then fails.
* Widening is the candidate's judged gap minus the non-private reference's point gap, both over
  the same subgroups under the same rule (:mod:`dpgov.gate.subgroups`); a reference gap judged
  otherwise fails the check with "cannot compare".
* Under ``evaluation.private: true`` (``judge_on: dp_interval``) the utility, drop and fairness
  lines are judged on the bounds recomputed from the facts' DP-evaluated release, with the
  ``dp_evaluation`` and ``test_budget:*`` lines beside them (:mod:`dpgov.gate.dp_checks`).
* Approvals: see :mod:`dpgov.gate.standing` (latest action of each approver stands).
* An ε is within a limit up to :func:`dpgov.contracts.within` (the accountants' round-off);
  spent ε is shown rounded up (:func:`dpgov.contracts.show_spent`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dpgov.contracts import show_spent, within
from dpgov.gate import dp_checks
from dpgov.gate.composition import composition_lines
from dpgov.gate.dp_checks import EvaluationLedgerFacts, EvaluationSummary
from dpgov.gate.empirical import EmpiricalAudit, empirical_check
from dpgov.gate.facts import CandidateFacts
from dpgov.gate.noise import secret_noise_check
from dpgov.gate.reference import confine_reference
from dpgov.gate.reference_floor import auroc_drop_check
from dpgov.gate.standing import ApprovalRecord, excluded_identities, standing
from dpgov.gate.subgroups import comparable, judged_gap, reference_gap, rule_of
from dpgov.policy.schema import Fairness, Policy

Observed = float | int | str | bool | None
ReservationState = str  # committed | pending | released | aborted | missing


@dataclass(frozen=True)
class Check:
    """One line of a decision."""

    name: str
    observed: Observed
    limit: Observed
    passed: bool
    reason: str
    # a check judged on a DP-evaluated release (dpgov.gate.dp_checks): the standard deviation
    # of the judged figure due to the release's noise alone, and the failure probability of
    # each bound it judged (None for every other check)
    noise_scale: float | None = None
    eta_check: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BlockFacts:
    """What the ledger says about one block at the moment of evaluation (at the policy δ)."""

    dataset: str
    block: str
    epsilon_spent: float
    epsilon_limit: float
    delta: float
    charges: int = 0
    pending: int = 0
    patients: int | None = None
    note: str = ""  # why the figures could not be computed, when they could not


@dataclass(frozen=True)
class LedgerFacts:
    """What the ledger says about a candidate: its blocks, its reservation, its chain."""

    blocks: tuple[BlockFacts, ...] = ()
    reservation_id: str | None = None
    reservation_state: ReservationState = "missing"
    reservation_dataset: str | None = None
    reservation_blocks: tuple[str, ...] | None = None
    run_epsilon: float | None = None  # ε of the mechanism the ledger charged, at the run's δ
    chain_ok: bool = True
    chain_reason: str = ""
    # the DP-evaluated release's charge and test blocks (None: not collected)
    evaluation: EvaluationLedgerFacts | None = None

    def block(self, dataset: str, block: str) -> BlockFacts | None:
        for b in self.blocks:
            if b.dataset == dataset and b.block == block:
                return b
        return None


@dataclass(frozen=True)
class Decision:
    model: str
    version: str
    policy_sha256: str | None
    checks: tuple[Check, ...]
    approvers: tuple[str, ...] = field(default=())  # approvals that counted
    refusers: tuple[str, ...] = field(default=())  # refusals that stand
    # how the gate used a DP-evaluated release (None: the policy does not evaluate privately)
    evaluation: EvaluationSummary | None = None

    @property
    def allowed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failing(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "allowed": self.allowed,
            "policy_sha256": self.policy_sha256,
            "failing": [c.name for c in self.failing],
            "approvers": list(self.approvers),
            "refusers": list(self.refusers),
            "evaluation": self.evaluation.to_dict() if self.evaluation is not None else None,
            "checks": [c.to_dict() for c in self.checks],
        }

    def summary(self) -> str:
        """One line: allowed, or the failing checks and why."""
        if self.allowed:
            return f"{self.model} version {self.version}: all {len(self.checks)} checks pass"
        parts = "; ".join(f"{c.name}: {c.reason}" for c in self.failing)
        return (
            f"{self.model} version {self.version} blocked by {len(self.failing)} check(s): {parts}"
        )


def evaluate(
    policy: Policy,
    facts: CandidateFacts,
    ledger_facts: LedgerFacts,
    approvals: Sequence[ApprovalRecord] = (),
    *,
    policy_sha256: str | None = None,
    run_status: str | None = None,
    policy_setter: str | None = None,
    empirical: EmpiricalAudit | None = None,
) -> Decision:
    """Judge one candidate against ``policy``. Pure: reads nothing, writes nothing.

    ``run_status`` is the status of the model version's training run in the tracking store
    (None: not known to the caller, no check). Only a run that ended normally (FINISHED) may
    release a model: one whose process was killed stays RUNNING.
    """
    checks: list[Check] = []
    checks += _privacy_checks(policy, facts, ledger_facts)
    checks += [Check(*line) for line in composition_lines(policy, facts, ledger_facts)]
    checks.append(Check(*secret_noise_check(policy, facts)))
    checks.append(Check(*empirical_check(policy, empirical)))  # dpgov.gate.empirical
    if run_status is not None:
        checks.append(_run_check(run_status))
    summary = None
    if policy.evaluation.private:  # judge_on dp_interval: bounds recomputed from the release
        lines, summary = dp_checks.evaluation_lines(policy, facts, ledger_facts.evaluation)
        checks += [Check(*line) for line in lines]
        judged = dp_checks.judge(policy, facts)
        utility, drop = dp_checks.utility_lines(policy, judged)
        checks += [Check(*line) for line in [*utility, drop]]
        fairness = [Check(*line) for line in dp_checks.fairness_lines(policy, judged)]
        checks += confine_reference(policy, fairness)
    else:
        checks += _utility_checks(policy, facts)
        checks.append(Check(*auroc_drop_check(policy, facts)))
        checks += confine_reference(policy, _fairness_checks(policy.fairness, facts))
    approval_checks, approvers, refusers = _approval_checks(policy, facts, approvals, policy_setter)
    checks += approval_checks
    return Decision(
        model=facts.model_name,
        version=str(facts.model_version) if facts.model_version is not None else "?",
        policy_sha256=policy_sha256,
        checks=tuple(checks),
        approvers=approvers,
        refusers=refusers,
        evaluation=summary,
    )


# ---------------------------------------------------------------------------------- privacy


def _privacy_checks(policy: Policy, facts: CandidateFacts, led: LedgerFacts) -> list[Check]:
    out = [
        Check(
            "private_model",
            "private" if facts.private else "non-private reference",
            "private",
            facts.private,
            "trained with DP-SGD"
            if facts.private
            else "the non-private reference is never promotable",
        )
    ]

    # the run's own ε: the larger of what training reported and what the ledger charged
    max_eps = policy.release_max_epsilon()
    claimed = [e for e in (facts.epsilon, led.run_epsilon) if e is not None]
    if not claimed:
        out.append(Check("release_epsilon", None, max_eps, False, "no ε recorded for this model"))
    else:
        eps = max(claimed)
        source = "ledger" if led.run_epsilon is not None and eps == led.run_epsilon else "run"
        ok = within(eps, max_eps)
        out.append(
            Check(
                "release_epsilon",
                eps,
                max_eps,
                ok,
                f"ε={show_spent(eps, 4)} ({source}) {'within' if ok else 'over'} the release limit "
                f"{max_eps:g}",
            )
        )

    max_delta = policy.release_max_delta()
    if facts.delta is None:
        out.append(Check("release_delta", None, max_delta, False, "no δ recorded for this model"))
    else:
        ok = facts.delta <= max_delta
        out.append(
            Check(
                "release_delta",
                facts.delta,
                max_delta,
                ok,
                f"δ={facts.delta:g} {'within' if ok else 'over'} the release limit {max_delta:g}",
            )
        )

    n = facts.n_train_patients
    if not policy.release.delta_below_inverse_patients:
        out.append(Check("delta_vs_patients", facts.delta, None, True, "off in policy"))
    elif facts.delta is None or n <= 0:
        out.append(
            Check(
                "delta_vs_patients",
                facts.delta,
                None,
                False,
                f"cannot judge: δ={facts.delta}, training patients={n}",
            )
        )
    else:
        limit = 1.0 / n
        ok = facts.delta < limit
        out.append(
            Check(
                "delta_vs_patients",
                facts.delta,
                limit,
                ok,
                f"δ={facts.delta:g} {'<' if ok else '>='} 1/{n} training patients",
            )
        )

    if policy.release.require_secure_rng:
        out.append(
            Check(
                "secure_rng",
                facts.secure_rng,
                True,
                facts.secure_rng,
                "trained with a secure noise generator"
                if facts.secure_rng
                else "policy requires a secure noise generator; this run did not use one",
            )
        )
    else:
        out.append(Check("secure_rng", facts.secure_rng, None, True, "off in policy"))

    # the ledger: the reservation behind this model, the chain, every block's budget
    out.append(_reservation_check(facts, led))
    out.append(
        Check(
            "ledger_chain",
            "intact" if led.chain_ok else "broken",
            "intact",
            led.chain_ok,
            "hash chain verifies"
            if led.chain_ok
            else f"ledger does not verify: {led.chain_reason or 'unknown'}",
        )
    )
    if not facts.blocks:
        out.append(Check("block_budget", None, None, False, "the model names no blocks"))
    for name in facts.blocks:
        b = led.block(facts.dataset, name)
        check = f"block_budget:{facts.dataset}/{name}"
        if b is None:
            out.append(
                Check(
                    check, None, policy.budget.epsilon_per_block, False, "block not in the ledger"
                )
            )
            continue
        if b.note:
            out.append(Check(check, None, b.epsilon_limit, False, b.note))
            continue
        ok = within(b.epsilon_spent, b.epsilon_limit)
        pending = f", {b.pending} pending" if b.pending else ""
        out.append(
            Check(
                check,
                b.epsilon_spent,
                b.epsilon_limit,
                ok,
                f"ε spent {show_spent(b.epsilon_spent, 4)} of {b.epsilon_limit:g} at "
                f"δ={b.delta:g} over {b.charges} charge(s){pending}"
                + ("" if ok else ": over budget"),
            )
        )
    return out


def _reservation_check(facts: CandidateFacts, led: LedgerFacts) -> Check:
    rid = facts.reservation_id
    if rid is None:
        return Check(
            "ledger_reservation",
            "missing",
            "committed",
            False,
            "no ledger reservation recorded for this model",
        )
    if led.reservation_id != rid or led.reservation_state == "missing":
        return Check(
            "ledger_reservation",
            "missing",
            "committed",
            False,
            f"reservation {rid} is not in the ledger",
        )
    if led.reservation_dataset is not None and led.reservation_dataset != facts.dataset:
        return Check(
            "ledger_reservation",
            "mismatch",
            "committed",
            False,
            f"reservation {rid} charged dataset {led.reservation_dataset!r}, the model "
            f"names {facts.dataset!r}",
        )
    if led.reservation_blocks is not None and set(led.reservation_blocks) != set(facts.blocks):
        return Check(
            "ledger_reservation",
            "mismatch",
            "committed",
            False,
            f"reservation {rid} charged blocks {sorted(led.reservation_blocks)}, the "
            f"model names {sorted(facts.blocks)}",
        )
    state = led.reservation_state
    reasons = {
        "committed": f"reservation {rid} committed",
        "pending": f"reservation {rid} is still pending (never committed)",
        "released": f"reservation {rid} was released (no step ran)",
        "aborted": f"reservation {rid} was aborted (training crashed)",
    }
    return Check(
        "ledger_reservation",
        state,
        "committed",
        state == "committed",
        reasons.get(state, f"reservation {rid} is {state}"),
    )


def _run_check(status: str) -> Check:
    reasons = {
        "FINISHED": "the training run ended normally",
        "RUNNING": "the training run never ended (its process was killed, or it still runs)",
        "FAILED": "the training run failed",
        "KILLED": "the training run was killed",
    }
    return Check(
        "run_finished",
        status,
        "FINISHED",
        status == "FINISHED",
        reasons.get(status, f"the training run is {status}"),
    )


# ---------------------------------------------------------------------------------- utility


def _utility_checks(policy: Policy, facts: CandidateFacts) -> list[Check]:
    u = policy.utility
    out: list[Check] = []
    if u.min_auroc is None:
        out.append(Check("auroc", facts.auroc, None, True, "off in policy"))
    elif u.judge_on == "interval":
        lo = facts.auroc_lo
        if lo is None:
            out.append(
                Check(
                    "auroc",
                    None,
                    u.min_auroc,
                    False,
                    "policy judges the interval; no bootstrap interval recorded",
                )
            )
        else:
            ok = lo >= u.min_auroc
            out.append(
                Check(
                    "auroc",
                    lo,
                    u.min_auroc,
                    ok,
                    f"AUROC lower bound {lo:.4f} (point {facts.auroc:.4f}) "
                    f"{'meets' if ok else 'below'} the floor {u.min_auroc:g}",
                )
            )
    else:
        ok = facts.auroc >= u.min_auroc
        out.append(
            Check(
                "auroc",
                facts.auroc,
                u.min_auroc,
                ok,
                f"AUROC {facts.auroc:.4f} {'meets' if ok else 'below'} the floor {u.min_auroc:g}",
            )
        )

    ece = facts.calibration_error
    if u.max_calibration_error is None:
        out.append(Check("calibration_error", ece, None, True, "off in policy"))
    else:
        ok = ece <= u.max_calibration_error
        out.append(
            Check(
                "calibration_error",
                ece,
                u.max_calibration_error,
                ok,
                f"ECE {ece:.4f} {'within' if ok else 'over'} the limit {u.max_calibration_error:g}",
            )
        )
    return out


# --------------------------------------------------------------------------------- fairness


def _fairness_checks(f: Fairness, facts: CandidateFacts) -> list[Check]:
    out: list[Check] = []
    label = {"auroc": "AUROC", "fnr": "FNR"}
    limits = {
        "auroc": (f.max_auroc_gap, f.max_auroc_gap_widening),
        "fnr": (f.max_fnr_gap, f.max_fnr_gap_widening),
    }
    for attribute in f.sensitive_attributes:
        for metric in ("auroc", "fnr"):
            max_gap, max_widening = limits[metric]
            name = f"{metric}_gap:{attribute}"
            wname = f"{metric}_gap_widening:{attribute}"
            if max_gap is None and max_widening is None:
                out.append(Check(name, None, None, True, "off in policy"))
                out.append(Check(wname, None, None, True, "off in policy"))
                continue
            jg = judged_gap(facts, attribute, metric, f)  # type: ignore[arg-type]
            if jg.gap is None:
                present = any(g.attribute == attribute for g in facts.subgroups)
                why = (
                    f"only {jg.groups} subgroup(s) of {attribute!r} have >= {f.min_group_size} "
                    f"patients and >= {f.min_group_positives} positives with a {label[metric]}"
                    if present
                    else f"no subgroup metrics recorded for {attribute!r}"
                )
                passed = not f.require_judgeable
                suffix = "" if passed else " (policy requires a judgeable gap)"
                for n, lim in ((name, max_gap), (wname, max_widening)):
                    if lim is None:
                        out.append(Check(n, None, None, True, "off in policy"))
                    else:
                        out.append(Check(n, None, lim, passed, f"not judged: {why}{suffix}"))
                continue

            if f.judge_on == "interval":
                judged, how = jg.hi, "interval upper bound"
            else:
                judged, how = jg.gap, "point estimate"
            src = "" if jg.source == "recorded" else ", recomputed from subgroups"
            # the gap itself
            if max_gap is None:
                out.append(Check(name, jg.gap, None, True, "off in policy"))
            elif judged is None:
                out.append(
                    Check(
                        name,
                        None,
                        max_gap,
                        False,
                        f"policy judges the interval; no bootstrap interval recorded "
                        f"(point gap {jg.gap:.4f})",
                    )
                )
            else:
                ok = judged <= max_gap
                out.append(
                    Check(
                        name,
                        judged,
                        max_gap,
                        ok,
                        f"{label[metric]} gap {judged:.4f} ({how} over {jg.groups} "
                        f"subgroups{src}) {'within' if ok else 'over'} {max_gap:g}",
                    )
                )
            # widening against the non-private reference
            if max_widening is None:
                out.append(Check(wname, None, None, True, "off in policy"))
                continue
            ref = reference_gap(facts, attribute, metric, f)
            unlike = comparable(ref, list(jg.names), rule_of(f)) if ref is not None else None
            if unlike is not None:
                out.append(Check(wname, None, max_widening, False, f"cannot compare: {unlike}"))
            elif facts.reference is None or ref is None:
                why = (
                    "no non-private reference recorded"
                    if facts.reference is None
                    else f"the reference recorded no {label[metric]} gap for {attribute!r}"
                )
                out.append(Check(wname, None, max_widening, False, why))
            elif judged is None:
                out.append(
                    Check(
                        wname,
                        None,
                        max_widening,
                        False,
                        "policy judges the interval; no bootstrap interval recorded",
                    )
                )
            else:
                widening = judged - ref.gap
                ok = widening <= max_widening
                out.append(
                    Check(
                        wname,
                        widening,
                        max_widening,
                        ok,
                        f"gap {judged:.4f} vs reference {ref.gap:.4f}: widened by "
                        f"{widening:+.4f}, {'within' if ok else 'over'} "
                        f"{max_widening:g}",
                    )
                )
    return out


# -------------------------------------------------------------------------------- approvals


def _approval_checks(
    policy: Policy, facts: CandidateFacts, records: Sequence[ApprovalRecord], setter: str | None
) -> tuple[list[Check], tuple[str, ...], tuple[str, ...]]:
    barred = excluded_identities(policy, author=facts.author, setter=setter)
    s = standing(records, policy.approvals, author=facts.author, excluded=barred)
    refusal_reason = (
        "no refusal stands"
        if not s.refusals
        else "refused by "
        + "; ".join(f"{r.by} ({r.text or 'no reason given'})" for r in s.refusals)
    )
    out = [
        Check("refusals", len(s.refusals), 0, not s.refusals, refusal_reason),
    ]
    required = policy.approvals.required
    counted = [r.by for r in s.approvals]
    reason = f"{len(counted)} of {required} required approval(s)"
    if counted:
        reason += ": " + ", ".join(counted)
    if s.ignored:
        reason += "; not counted: " + ", ".join(f"{r.by} ({why})" for r, why in s.ignored)
    if policy.approvals.allow_author:  # a single-user policy says so wherever it is judged
        reason += f"; the run's author ({facts.author}) may approve (approvals.allow_author)"
    out.append(Check("approvals", len(counted), required, len(counted) >= required, reason))
    return out, tuple(counted), tuple(r.by for r in s.refusals)
