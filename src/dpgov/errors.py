"""Errors that the command line turns into one clear line and an exit code.

User mistakes (bad input, exit 2) are kept apart from refusals (budget, gate, findings: exit 1);
anything else is an internal bug and keeps its traceback.
"""

from __future__ import annotations


class DpgovError(Exception):
    """Base class of errors that carry an exit code and a one-line message."""

    exit_code = 2


class UsageError(DpgovError, ValueError):
    """Bad input: a wrong argument, an unreadable file, an unknown name. Exit code 2."""

    exit_code = 2


class Refused(DpgovError):
    """The request was well formed but refused (budget, gate, failed validation). Exit code 1."""

    exit_code = 1


class BudgetExceeded(Refused):
    """A reservation would push a block past its budget."""

    def __init__(
        self,
        *,
        dataset: str,
        block: str,
        requested: float,
        spent: float,
        limit: float,
        after: float,
    ) -> None:
        self.dataset = dataset
        self.block = block
        self.requested = requested
        self.spent = spent
        self.limit = limit
        self.after = after
        remaining = max(0.0, limit - spent)
        super().__init__(
            f"budget refused for block {block!r} of dataset {dataset!r}: this run costs "
            f"ε={requested:.4f} on its own and would bring the block to ε={after:.4f}; "
            f"limit {limit:g}, spent {spent:.4f}, remaining {remaining:.4f} "
            f"(over by {after - limit:.4f})"
        )


class LedgerUnavailable(DpgovError):
    """The ledger database does not answer. Exit code 2: nothing was charged."""

    exit_code = 2
