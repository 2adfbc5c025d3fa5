"""The ε figures DP runs logged, against the ledger (part of check 6).

A run logs its own ε (``epsilon``) and each block's cumulative ε after its commit
(``epsilon_block.<block>``). Each is compared with the figure the ledger recorded for exactly
the same state when there is one (hash-chained, so covered by the chain and anchor checks),
otherwise with a from-scratch composition, for the newest runs first and at most
:data:`MAX_RUN_COMPOSITIONS` of them (all with ``deep``).

A run's own ε is one mechanism, stated by the accountant. Its cumulative block figures are the
ledger's enforced ε (issue 16): the accountant's composition under ``fixed``, the RDP filter's
under ``adaptive`` (:mod:`dpgov.report.checks.filter_figures`; the reservation's recorded rule,
else the policy's for the dataset), recomputed from nothing (cheap, never rationed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dpgov.accounting import AccountantFailed
from dpgov.contracts import METRIC_DELTA, METRIC_EPSILON, PARAM_ACCOUNTANT, block_metric_key
from dpgov.policy import LoadedPolicy
from dpgov.report.checks import fmt_epsilon
from dpgov.report.checks.filter_figures import (
    charge_token,
    enforced_token,
    filter_value,
    is_filter,
)
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import Charge, Epsilons, Replay, close_enough, merge_key
from dpgov.report.rows import RunFigureCounts
from dpgov.report.times import parse_time
from dpgov.tracking.records import RunRecord

MAX_CANDIDATE_STATES = 12  # ledger states tried when matching a logged cumulative ε
MAX_RUN_COMPOSITIONS = 4  # from-scratch compositions spent on run figures (--deep: no limit)

Request = tuple[Any, float, str]  # a composition: (state, δ, accountant)


@dataclass
class RunFigures:
    """Where the ε figures a run logged were checked against: the figure the ledger recorded
    for exactly the same state, a from-scratch composition, or (beyond the budget of
    compositions, without --deep) not at all."""

    eps: Epsilons
    recorded: dict[Request, float]
    budget: int | None  # compositions left; None: unlimited (--deep)
    granted: set[Request] = field(default_factory=set)  # paid for up front
    compared_with_recorded: int = 0
    recomputed: int = 0
    not_checked: int = 0

    def value(self, key: Any, delta: float, accountant: str) -> float | None:
        if is_filter(accountant):
            self.recomputed += 1
            return filter_value(key, delta, accountant)
        known = self.eps.known(key, delta=delta, accountant=accountant)
        if known is not None:
            self.recomputed += 1
            return known
        if (key, delta, accountant) in self.recorded:
            self.compared_with_recorded += 1
            return self.recorded[(key, delta, accountant)]
        granted = (key, delta, accountant) in self.granted
        if self.budget is not None and self.budget <= 0 and not granted:
            self.not_checked += 1
            return None
        if self.budget is not None and not granted:
            self.budget -= 1
        self.recomputed += 1
        return self.eps.of_key(key, delta=delta, accountant=accountant)

    def counts(self) -> RunFigureCounts:
        return RunFigureCounts(
            compared_with_recorded=self.compared_with_recorded,
            recomputed=self.recomputed,
            not_checked=self.not_checked,
        )


def recorded_figures(r: Replay) -> dict[Request, float]:
    """The ε the ledger recorded, by the exact state it was recorded for: each reservation's
    ε of its plan alone and each block's ε after it (hash-chained, so they cannot be changed
    without the chain check or the anchors noticing)."""
    out: dict[Request, float] = {}
    for c in r.charges.values():
        if not c.delta or not c.accountant:
            continue
        if c.epsilon_run is not None:
            out[(merge_key([c.planned]), c.delta, c.accountant)] = c.epsilon_run
        token = charge_token(c)
        if token is None or is_filter(token):  # filter figures are recomputed, never looked up
            continue
        for b, value in c.epsilon_after.items():
            out[(r.state(c.dataset, b, c.seq), c.delta, token)] = value
    return out


def run_figures(r: Replay, eps: Epsilons, *, deep: bool) -> RunFigures:
    """The figures to check runs against, with the budget of compositions for them."""
    return RunFigures(eps, recorded_figures(r), None if deep else MAX_RUN_COMPOSITIONS)


def figure_request(run: RunRecord, c: Charge, policy: LoadedPolicy) -> tuple[float, str]:
    """The δ and accountant a run's own ε is stated at."""
    delta = run.metrics.get(METRIC_DELTA) or c.delta or policy.policy.budget.delta
    acc = c.accountant or run.params.get(PARAM_ACCOUNTANT) or policy.policy.budget.accountant
    return delta, acc


def block_request(run: RunRecord, c: Charge, policy: LoadedPolicy) -> tuple[float, str]:
    """The δ and the rule (accountant or filter token) a run's block figures are stated at."""
    delta, acc = figure_request(run, c, policy)
    if c.delta and c.accountant:  # recorded under a policy of this version
        return delta, charge_token(c) or enforced_token(policy.policy.budget, c.dataset)
    return delta, acc


def prefetch_figures(
    r: Replay,
    runs: Sequence[tuple[RunRecord, Charge]],
    figures: RunFigures,
    policy: LoadedPolicy,
) -> None:
    """Compose up front, in parallel, the states the newest runs' figures need that the
    ledger recorded no figure for (as many as the budget of compositions allows). ``runs``:
    the committed DP runs with their charges, newest first."""
    wanted: dict[Request, None] = {}
    for run, c in runs:
        delta, acc = figure_request(run, c, policy)
        _, block_acc = block_request(run, c, policy)
        keys = [(merge_key([c.mechanism]), acc)] if METRIC_EPSILON in run.metrics else []
        keys += [
            (r.state(c.dataset, b, c.closed_seq), block_acc)
            for b in c.blocks
            if block_metric_key(b) in run.metrics and not is_filter(block_acc)
        ]
        for key, a in keys:
            if (key, delta, a) not in figures.recorded and figures.eps.known(
                key, delta=delta, accountant=a
            ) is None:
                wanted[(key, delta, a)] = None
    todo = list(wanted)
    if figures.budget is not None:
        todo = todo[: figures.budget]
        figures.budget -= len(todo)
    figures.granted.update(todo)
    figures.eps.prefetch(todo)


def check_figures(
    r: Replay,
    run: RunRecord,
    c: Charge,
    figures: RunFigures,
    policy: LoadedPolicy,
    where: dict[str, Any],
) -> list[Finding]:
    """A committed run's logged ε and cumulative ε per block against the ledger."""
    out: list[Finding] = []
    delta, acc = figure_request(run, c, policy)
    logged = run.metrics.get(METRIC_EPSILON)
    if logged is not None:
        try:
            own = figures.value(merge_key([c.mechanism]), delta, acc)
        except (AccountantFailed, ValueError):
            own = None
        if own is not None and not close_enough(own, logged):
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"run {run.run_id} logged ε={fmt_epsilon(logged)}, the mechanism its "
                    f"reservation {c.id} committed costs ε={fmt_epsilon(own)} (δ={delta:g}, "
                    f"{acc})",
                    time=run.start_time,
                    **where,
                )
            )
    end = parse_time(run.end_time)
    commit = c.closed_seq or c.seq
    delta, acc = block_request(run, c, policy)
    for b in c.blocks:
        value = run.metrics.get(block_metric_key(b))
        if value is None:
            continue
        first, matched, conclusive = _match_block(r, c, b, value, commit, end, figures, delta, acc)
        if first is not None and not matched and conclusive:
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"run {run.run_id} logged cumulative ε={fmt_epsilon(value)} for "
                    f"block {c.dataset}/{b}, the ledger's entries give ε={fmt_epsilon(first)} "
                    f"after its commit (entry {c.closed_seq})",
                    dataset=c.dataset,
                    block=b,
                    time=run.start_time,
                    **where,
                )
            )
    return out


def _match_block(
    r: Replay,
    c: Charge,
    b: str,
    value: float,
    commit: int,
    end: Any,
    figures: RunFigures,
    delta: float,
    acc: str,
) -> tuple[float | None, bool, bool]:
    """What the block had spent just after the commit, or (concurrent runs) after any later
    change made before the run ended: (the figure after the commit, whether ``value`` matched
    one, whether every state the run could have seen was tried)."""
    seqs = [commit] + [s for s in r.change_seqs(c.dataset, b) if s > commit]
    first: float | None = None
    for s in seqs[:MAX_CANDIDATE_STATES]:
        t = parse_time(r.times.get(s))
        if first is not None and end is not None and t is not None and t > end:
            return first, False, True  # every state the run could have seen was tried
        try:
            then = figures.value(r.state(c.dataset, b, s), delta, acc)
        except (AccountantFailed, ValueError):
            return first, False, False
        if then is None:  # out of compositions: neither a match nor a finding
            return first, False, False
        first = then if first is None else first
        if close_enough(then, value):
            return first, True, False
    return first, False, True
