"""Sites for federated ledger tests: each a real ledger (SQLite file or PostgreSQL schema) with
its own policy set on it (``dpgov policy set``'s library call), and training blocks with
members, as :func:`dpgov.federated.sites.open_sites` hands them to the engine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from scipy.optimize import brentq
from scipy.stats import norm

from dpgov.federated.types import OpenSite, SiteSpec
from dpgov.gate.in_force import policy_in_force
from dpgov.ledger import Ledger
from dpgov.ledger.policies import set_policy
from dpgov.policy.load import load_policy

DATASET = "cohort"
DELTA = 1e-5
# The default grid Λ of the RDP filter, written out again (tests/filter_reference.py's).
ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
)  # fmt: skip


def ids(first: int, last: int) -> list[str]:
    """Pseudonyms of patients first..last-1 (20 hex digits, as dpgov data prepare writes)."""
    return [f"{i:020x}" for i in range(first, last)]


def make_site(
    tmp_path: Path,
    name: str,
    blocks: dict[str, list[str]],
    *,
    limit: float,
    domain: str | None = None,
    url: str | None = None,
    composition: str = "adaptive",
) -> OpenSite:
    """A site with its own ledger and its own policy in force (ε limit ``limit`` at δ 1e-5)."""
    url = url or f"sqlite:///{tmp_path / f'{name}.db'}"
    ledger = Ledger.open(url)
    policy = tmp_path / f"{name}-policy.yaml"
    policy.write_text(
        "version: 1\n"
        f"budget: {{epsilon_per_block: {limit!r}, delta: 1.0e-5, accountant: pld, "
        f"composition: {composition}}}\n"
    )
    set_policy(ledger, load_policy(policy), dataset=None, reason="federated test", actor="tester")
    return OpenSite(
        spec=SiteSpec(name=name, data=str(tmp_path / name), ledger_url=url, id_domain=domain),
        ledger=ledger,
        policy=policy_in_force(ledger, DATASET),
        dataset=DATASET,
        data_version=f"{name}-v1",
        path=str(tmp_path / name),
        blocks=list(blocks),
        block_patients={b: len(set(m)) for b, m in blocks.items()},
        block_members={b: list(m) for b, m in blocks.items()},
    )


def gaussian_filter_eps(sigmas: Sequence[float], delta: float = DELTA) -> float:
    """The RDP filter's ε of Gaussian releases (sensitivity 1, noise σ each), from the closed
    form RDP(α) = α / (2σ²) (Mironov 2017, Prop. 7), not from dp_accounting:
    min over Λ of Σ RDP(α) + log(|Λ|/δ)/(α − 1)."""
    if not sigmas:
        return 0.0
    rho = sum(1.0 / (2.0 * s * s) for s in sigmas)
    slack = math.log(len(ORDERS) / delta)
    return min(a * rho + slack / (a - 1.0) for a in ORDERS)


def gaussian_exact_eps(sigmas: Sequence[float], delta: float = DELTA) -> float:
    """The exact ε at δ of composed Gaussian releases (sensitivity 1): they compose to one
    Gaussian of σ = (Σ σᵢ⁻²)^(-1/2), whose δ(ε) = Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ)
    (Balle and Wang 2018, Thm 8); solved for ε. The reference of the tight (PLD) figure."""
    s = sum(x**-2 for x in sigmas) ** -0.5

    def gap(eps: float) -> float:
        return float(norm.cdf(0.5 / s - eps * s) - math.exp(eps) * norm.cdf(-0.5 / s - eps * s))

    return float(brentq(lambda e: gap(e) - delta, 0.0, 100.0, xtol=1e-12))
