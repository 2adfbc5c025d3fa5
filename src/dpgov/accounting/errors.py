"""Accounting errors, each carrying its exit code (see the tree in :mod:`dpgov.errors`).

- :class:`AccountingInputError`: a parameter out of its domain, a :class:`~dpgov.errors.UsageError`
  (exit 2) and so a ``ValueError``.
- :class:`InfeasibleBudget`: no noise multiplier meets the target, a
  :class:`~dpgov.errors.Refused` (exit 1) and still a ``ValueError``.
- :class:`AccountantFailed`: an accountant could not compute ε, exit 1 like the refusal every
  caller has turned it into (the ledger, ``dpgov cost``); still a ``RuntimeError``.
- :class:`AccountingTooCostly`: composing would cost more than one charge may
  (:mod:`dpgov.accounting.bounded`); refused before the work starts. An
  :class:`AccountantFailed` (callers that report an uncomputable ε report it) and a
  :class:`~dpgov.errors.Refused`, exit 1.

The accounting package imports nothing else from dpgov but this base.
"""

from __future__ import annotations

from dpgov.errors import DpgovError, Refused, UsageError


class AccountingInputError(UsageError):
    """A mechanism or accountant parameter is out of its domain. Exit code 2."""


class InfeasibleBudget(Refused, ValueError):
    """No noise multiplier meets the target: the prior spend already uses the budget. Exit 1."""


class AccountantFailed(DpgovError, RuntimeError):
    """An accountant could not compute ε (for example PRV at very large ε). Exit code 1."""

    exit_code = 1


class AccountingTooCostly(AccountantFailed, Refused):
    """Composing these mechanisms would need more memory or time than one charge may
    (:mod:`dpgov.accounting.bounded`): refused before the work starts, saying how to change
    σ, q or T. Exit code 1."""

    exit_code = 1
