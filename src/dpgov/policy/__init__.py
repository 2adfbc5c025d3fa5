"""Policies: budgets, release limits, utility floors, fairness limits and approvals."""

from dpgov.policy.load import LoadedPolicy, load_policy
from dpgov.policy.schema import (
    Approvals,
    Budget,
    Fairness,
    Policy,
    Release,
    Utility,
    approver_key,
)

__all__ = [
    "Approvals",
    "Budget",
    "Fairness",
    "LoadedPolicy",
    "Policy",
    "Release",
    "Utility",
    "approver_key",
    "load_policy",
]
