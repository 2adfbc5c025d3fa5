"""Check 4: every block's ε, from scratch.

The mechanisms charged to a block (pending, committed and aborted reservations; released ones
are not charged) are composed anew with the policy's accountant at its δ, and compared with the
ledger's own figure (its projection and composition cache), with the ε the block's newest
reservation recorded (every reservation's with ``deep``), and with the policy's limit.
Recomputation and recorded figures agree to rounding (:func:`dpgov.report.replay.close_enough`).

Both figures are recomputed (issue 16): the accountant's composition (``epsilon_fixed``, what
the ledger's caches hold) and the RDP filter's (``epsilon_adaptive``,
:mod:`dpgov.report.checks.filter_figures`); the block's ε judged against the limit is the one
its rule enforces (``budget.mode_for``; the audit takes a block's id domain to be its dataset),
and each reservation's recorded ε after it is recomputed under the rule it recorded.
"""

from __future__ import annotations

from dpgov.accounting import AccountantFailed
from dpgov.contracts import exceeds
from dpgov.policy import LoadedPolicy
from dpgov.report.checks import count_by, fmt_epsilon
from dpgov.report.checks.filter_figures import (
    charge_token,
    filter_token,
    filter_value,
    is_filter,
)
from dpgov.report.findings import Finding, finding
from dpgov.report.ledger_snapshot import LedgerSnapshot
from dpgov.report.replay import Charge, Epsilons, Replay, StateKey, close_enough
from dpgov.report.rows import BlockRow, BurnPoint

Request = tuple[StateKey, float, str]  # a composition: (state, δ, accountant)


def _recorded_to_check(r: Replay, *, deep: bool) -> dict[tuple[str, str], list[Charge]]:
    """Per block, the reservations whose recorded ε is recomputed: the newest (all: deep)."""
    out = {}
    for ds, b in r.blocks:
        recorded = [
            c
            for c in r.by_block.get((ds, b), [])
            if b in c.epsilon_after and c.delta and c.accountant
        ]
        out[(ds, b)] = recorded if deep else recorded[-1:]
    return out


def block_requests(r: Replay, policy: LoadedPolicy, *, deep: bool = False) -> list[Request]:
    """The compositions :func:`check_budgets` needs: every block now at the policy's δ, and
    the states whose recorded ε it recomputes. Start them early with :meth:`Epsilons.start`."""
    budget = policy.policy.budget
    return [(r.state(ds, b), budget.delta, budget.accountant) for ds, b in r.blocks] + [
        (r.state(c.dataset, b, c.seq), c.delta or 0.0, c.accountant or "")
        for (_, b), cs in _recorded_to_check(r, deep=deep).items()
        for c in cs
    ]


def check_budgets(
    r: Replay, snap: LedgerSnapshot, policy: LoadedPolicy, eps: Epsilons, *, deep: bool, now: str
) -> tuple[list[Finding], list[BlockRow]]:
    """Every block's ε from scratch, against the ledger, the recorded figures and the limit."""
    budget = policy.policy.budget
    out: list[Finding] = []
    blocks = []
    checked = _recorded_to_check(r, deep=deep)
    eps.prefetch(block_requests(r, policy, deep=deep))
    for (ds, b), rec in sorted(r.blocks.items()):
        charges = r.by_block.get((ds, b), [])
        status = count_by(c.status for c in charges)
        row = BlockRow(
            dataset=ds,
            block=b,
            patients=rec.patients,
            retired=rec.retired,
            data_version=rec.data_version,
            registered=rec.time,
            epsilon=None,
            epsilon_ledger=None,
            epsilon_limit=budget.epsilon_per_block,
            remaining=None,
            delta=budget.delta,
            accountant=budget.accountant,
            charges=sum(1 for c in charges if c.active),
            pending=status.get("pending", 0),
            committed=status.get("committed", 0),
            aborted=status.get("aborted", 0),
            released=status.get("released", 0),
        )
        blocks.append(row)
        try:
            spent = eps.of_key(r.state(ds, b), delta=budget.delta, accountant=budget.accountant)
        except (AccountantFailed, ValueError) as err:
            out.append(
                finding(
                    "epsilon_uncomputable",
                    f"block {ds}/{b}: its charges cannot be "
                    f"composed with {budget.accountant}: {err}",
                    dataset=ds,
                    block=b,
                )
            )
            continue
        adaptive = filter_value(r.state(ds, b), budget.delta, filter_token(budget.orders))
        row.epsilon_fixed, row.epsilon_adaptive = spent, adaptive
        row.composition = budget.mode_for(ds)
        enforced = adaptive if row.composition == "adaptive" else spent
        row.epsilon = enforced
        row.remaining = max(0.0, budget.epsilon_per_block - enforced)
        led = (snap.budget or {}).get((ds, b))
        row.epsilon_ledger = led
        if led is not None and not close_enough(led, enforced):
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"block {ds}/{b}: the ledger reports ε={fmt_epsilon(led)}, its "
                    f"entries compose to ε={fmt_epsilon(enforced)} (at δ={budget.delta:g}, "
                    f"{row.composition} rule): its projection or composition cache is wrong",
                    dataset=ds,
                    block=b,
                )
            )
        if exceeds(enforced, budget.epsilon_per_block):
            out.append(
                finding(
                    "block_over_budget",
                    f"block {ds}/{b} has spent ε={fmt_epsilon(enforced)} ({row.composition} "
                    f"rule), over the policy's limit {budget.epsilon_per_block:g} "
                    f"(at δ={budget.delta:g})",
                    dataset=ds,
                    block=b,
                )
            )
        out += _recorded_figures(r, ds, b, checked[(ds, b)], eps)
        row.burn_down = [
            BurnPoint(
                time=c.time,
                seq=c.seq,
                epsilon=c.epsilon_after[b],
                delta=c.delta,
                reservation=c.id,
                source="recorded",
            )
            for c in charges
            if b in c.epsilon_after and c.delta and c.accountant
        ] + [
            BurnPoint(
                time=now,
                seq=r.head_seq,
                epsilon=enforced,
                delta=budget.delta,
                reservation=None,
                source="recomputed",
            )
        ]
    return out, blocks


def _recorded_figures(
    r: Replay, ds: str, b: str, checked: list[Charge], eps: Epsilons
) -> list[Finding]:
    """The ε reservations recorded for a block after them, against the entries before."""
    out = []
    for c in checked:
        token = charge_token(c)
        if token is None:
            continue  # a reservation reaching domains under both rules: per class only
        try:
            if is_filter(token):
                then = filter_value(r.state(ds, b, c.seq), c.delta or 0.0, token)
            else:
                then = eps.of_key(r.state(ds, b, c.seq), delta=c.delta or 0.0, accountant=token)
        except (AccountantFailed, ValueError):
            continue
        if not close_enough(then, c.epsilon_after[b]):
            out.append(
                finding(
                    "epsilon_mismatch",
                    f"block {ds}/{b}: reservation {c.id} (entry {c.seq}) "
                    f"recorded ε={fmt_epsilon(c.epsilon_after[b])} after it, the entries before "
                    f"it compose to ε={fmt_epsilon(then)}",
                    dataset=ds,
                    block=b,
                    reservation=c.id,
                    seq=c.seq,
                    time=c.time,
                )
            )
    return out
