"""The ledger's per-block ε over history classes against brute force (issue 15), in both
composition modes: for random block structures over a tiny population and random charges,
each block's ε equals the largest, over its members, of the composition of the charges that
reached each member (computed here patient by patient, with dp_accounting directly)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Literal

import pytest
from dp_accounting import dp_event, pld, rdp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpgov.accounting import PLD_DISCRETIZATION, DpSgdMechanism
from dpgov.accounting.filters import FILTER_ORDERS
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget

MECHANISMS = (
    DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=100),
    DpSgdMechanism(noise_multiplier=1.5, sample_rate=0.02, steps=50),
    DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.05, steps=30),
)
DELTA = 1e-5
PATIENTS = 6
REL = 1e-6  # the ledger and this reference compose the same events at the same discretisation

# block i holds the patients whose bit i is set (a nonempty subset each)
structures = st.lists(st.integers(1, 2**PATIENTS - 1), min_size=1, max_size=4)
# each charge: (which blocks, as bits of the block indices), mechanism, released afterwards
charges = st.lists(
    st.tuples(st.integers(1, 15), st.integers(0, len(MECHANISMS) - 1), st.booleans()),
    min_size=1,
    max_size=4,
)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pseudonym(patient: int) -> str:
    return f"{patient:020x}"


def event(m: DpSgdMechanism) -> dp_event.DpEvent:
    inner = dp_event.PoissonSampledDpEvent(
        m.sample_rate, dp_event.GaussianDpEvent(m.noise_multiplier)
    )
    return dp_event.SelfComposedDpEvent(inner, m.steps)


def reference(mechs: list[DpSgdMechanism], accountant: str) -> float:
    """One patient's ε: their charges composed by dp_accounting itself."""
    if not mechs:
        return 0.0
    acc: pld.PLDAccountant | rdp.RdpAccountant
    if accountant == "pld":
        acc = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    else:
        acc = rdp.RdpAccountant()
    acc.compose(dp_event.ComposedDpEvent([event(m) for m in mechs]))
    return float(acc.get_epsilon(DELTA))


def filter_reference(mechs: list[DpSgdMechanism]) -> float:
    """The RDP filter's ε over FILTER_ORDERS of one patient's charges (docs/composition.md):
    RDP from dp_accounting, the filter's formula written out here."""
    if not mechs:
        return 0.0
    acc = rdp.RdpAccountant(orders=list(FILTER_ORDERS))
    acc.compose(dp_event.ComposedDpEvent([event(m) for m in mechs]))
    n = len(FILTER_ORDERS)
    return min(
        r + math.log(n / DELTA) / (a - 1) for a, r in zip(FILTER_ORDERS, acc._rdp, strict=True)
    )


def check(
    accountant: Literal["pld", "rdp"], blocks_bits: list[int], plan: list[tuple[int, int, bool]]
) -> None:
    budget = Budget(epsilon_per_block=100.0, delta=DELTA, accountant=accountant)
    names = [f"b{i}" for i in range(len(blocks_bits))]
    members = [[p for p in range(PATIENTS) if bits >> p & 1] for bits in blocks_bits]
    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger.open(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        for name, who in zip(names, members, strict=True):
            led.add_block(
                dataset="d", block=name, patients=len(who), members=[pseudonym(p) for p in who]
            )
        charged: list[tuple[set[int], DpSgdMechanism]] = []  # (blocks, mechanism) still active
        for bits, mi, released in plan:
            chosen = [i for i in range(len(names)) if bits >> i & 1] or [0]
            res = led.reserve(
                dataset="d",
                blocks=[names[i] for i in chosen],
                mechanism=MECHANISMS[mi],
                budget=budget,
            )
            if released:
                led.release(res.id)
            else:
                charged.append((set(chosen), MECHANISMS[mi]))
        status = {s.block: s for s in led.budget(budget, dataset="d")}
        led.close()
    memo: dict[tuple[int, ...], tuple[float, float]] = {}
    for i, name in enumerate(names):
        worst, worst_adaptive = 0.0, 0.0
        for p in members[i]:
            holding = {j for j, who in enumerate(members) if p in who}
            reached = tuple(k for k, (bs, _) in enumerate(charged) if bs & holding)
            if reached not in memo:  # each charge once, however many of its blocks hold p
                mechs = [charged[k][1] for k in reached]
                memo[reached] = (reference(mechs, accountant), filter_reference(mechs))
            worst = max(worst, memo[reached][0])
            worst_adaptive = max(worst_adaptive, memo[reached][1])
        assert status[name].epsilon_spent_fixed == pytest.approx(worst, rel=REL, abs=1e-12)
        assert status[name].epsilon_spent_adaptive == pytest.approx(
            worst_adaptive, rel=REL, abs=1e-12
        )
        # the enforced figure under the default rule (budget.composition: adaptive)
        assert status[name].epsilon_spent == status[name].epsilon_spent_adaptive


@SETTINGS
@given(structures, charges)
def test_block_epsilon_is_the_worst_member_under_pld(blocks_bits, plan):
    check("pld", blocks_bits, plan)


@SETTINGS
@given(structures, charges)
def test_block_epsilon_is_the_worst_member_under_rdp(blocks_bits, plan):
    check("rdp", blocks_bits, plan)
