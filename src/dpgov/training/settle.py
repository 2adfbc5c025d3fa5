"""Settling after a failure, written once for every path of a governed run.

- A failure during training *releases* the reservation only when no optimizer step ran, and
  otherwise *aborts* it: an aborted reservation stays fully charged (conservative). A run
  killed outright (SIGKILL, power loss) leaves it pending, which also counts as spent.
- A failure after the commit (evaluation, tracking) leaves the ledger's charge as it is and
  marks the MLflow run FAILED with the reason.

Settling is best effort while the original error propagates: the original error matters more,
and a reservation that could not be settled still counts in full.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dpgov.tracking import runs

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Ledger, Reservation

log = logging.getLogger(__name__)


def reason(err: BaseException) -> str:
    """``ErrorType: first line of the message`` (or the type alone)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def quiet(fn: Callable[[], Any]) -> None:
    """Best effort while another error propagates (a pending reservation still counts)."""
    try:
        fn()
    except Exception:  # pragma: no cover - the original error matters more
        log.exception("could not settle after a failed run")


def settle_reservation(
    ledger: Ledger, reservation: Reservation, steps: int, err: BaseException
) -> None:
    """Release when no step ran; otherwise abort (the reservation stays fully charged)."""
    why = reason(err)
    if steps == 0:
        quiet(lambda: ledger.release(reservation.id, reason=f"no step ran: {why}"))
    else:
        quiet(lambda: ledger.abort(reservation.id, reason=f"after {steps} steps: {why}"))


def end_failed_run(run_id: str | None, err: BaseException) -> None:
    """Mark the MLflow run FAILED with the error's first line (nothing when no run opened)."""
    if run_id is None:
        return
    why = reason(err)
    quiet(lambda: runs.end_run(run_id, failed=True, reason=why))
