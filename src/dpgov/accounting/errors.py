"""Accounting errors. The accounting package imports nothing else from dpgov, so the
command line maps these to exit codes itself (bad parameters: 2, infeasible: 1)."""


class AccountingInputError(ValueError):
    """A mechanism or accountant parameter is out of its domain."""


class InfeasibleBudget(ValueError):
    """No noise multiplier meets the target: the prior spend already uses the budget."""


class AccountantFailed(RuntimeError):
    """An accountant could not compute ε (for example PRV at very large ε)."""
