"""The policy in force: what every command that charges, records or releases enforces.

The policy is ledger state (:mod:`dpgov.ledger.policies`): the newest policy set for a dataset
on the ledger, else the newest one set for the whole ledger, else the policy packaged with
dpgov (``src/dpgov/defaults/policy.yaml``; never a file in the working directory). No caller
chooses it: ``--policy`` remains only on what-if commands, which charge and record nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dpgov.ledger.policies import PolicyRecord, policy_history

if TYPE_CHECKING:
    from dpgov.ledger import BlockStatus, Ledger
    from dpgov.policy import LoadedPolicy


def policy_in_force(ledger: Ledger, dataset: str | None = None) -> LoadedPolicy:
    """The policy in force now for ``dataset`` (None: the ledger-wide one)."""
    return record_in_force(ledger, dataset).loaded


def record_in_force(ledger: Ledger, dataset: str | None = None) -> PolicyRecord:
    """The policy in force now for ``dataset``, with who set it, when and why."""
    return policy_history(ledger).in_force(dataset)


def policy_at(ledger: Ledger, dataset: str | None, seq: int) -> LoadedPolicy:
    """The policy that was in force for ``dataset`` when entry ``seq`` was written (the
    entries before it decide; an entry is judged by the policy it was written under)."""
    return policy_history(ledger).in_force(dataset, seq - 1).loaded


def budgets_in_force(ledger: Ledger, dataset: str | None = None) -> list[BlockStatus]:
    """Every block's status (of one dataset, or all) under its dataset's policy in force."""
    h = policy_history(ledger)
    datasets = [dataset] if dataset is not None else ledger.datasets()
    out: list[BlockStatus] = []
    for ds in datasets:
        out += ledger.budget(h.in_force(ds).loaded.policy.budget, dataset=ds)
    return out


__all__ = ["budgets_in_force", "policy_at", "policy_in_force", "record_in_force"]
