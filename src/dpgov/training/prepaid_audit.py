"""The empirical audit prepaid with its candidate (``release.require_empirical_audit: true``).

Under that policy a candidate is released only after ``dpgov audit-model`` has run on it, and
the audit reproduces the candidate's mechanism (σ, q, T) on the candidate's blocks
(:mod:`dpgov.training.audit_model`). A candidate that used its blocks' whole remaining budget
could then never be audited, hence never released. So a governed run under that policy:

- **plans** the pair: σ is calibrated so that the candidate alone stays within its own
  ``train.target_epsilon`` and its blocks stay within their limit after *both* the candidate
  and its audit. Two runs of DP-SGD (σ, q, T) on the same patients compose exactly as one run
  of (σ, q, 2T): identical steps self-compose, so calibrating the block limit at 2T steps is
  the pair's calibration (tests/unit/training/test_prepaid_audit.py checks it against
  dp_accounting's PLD and RDP accountants);
- **reserves** both before training, the candidate first (:func:`reserve_audit`): when the
  audit's reservation is refused, the candidate's is released (no step ran), so a refusal
  leaves nothing charged (exit 1);
- records the audit's reservation id in the run's MLflow tag :data:`TAG_AUDIT_RESERVATION`,
  the run summary (``audit_reservation``) and the privacy statement (``empirical_audit``);
- ``dpgov audit-model`` runs on that reservation when it is still pending and holds the
  candidate's mechanism (:func:`prepaid_for`), committing the steps it ran; else it reserves
  as it always did. A prepaid reservation never audited stays pending: charged, and listed
  among the pending reservations of ``dpgov audit``.

The candidate's own ε ("this run alone") stays its own mechanism's: the audit is another
reservation, never part of the candidate's charge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dpgov.accounting import DpSgdMechanism
from dpgov.errors import Refused, UsageError
from dpgov.training.settle import quiet, reason

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Ledger, Reservation, ReservationInfo
    from dpgov.training.planning import RunPlan

TAG_AUDIT_RESERVATION = "dpgov.audit_reservation"
"""MLflow tag of a candidate's run: the ledger reservation prepaid for its empirical audit."""


def reserve_audit(p: RunPlan, candidate: Reservation, *, ledger: Ledger) -> Reservation:
    """Reserve the candidate's mechanism again on its blocks, for its audit. Refused: the
    candidate's reservation (no step has run) is released and the refusal names the pair."""
    try:
        return ledger.reserve(
            dataset=p.dataset,
            blocks=p.blocks,
            mechanism=p.mechanism,
            budget=p.policy.policy.budget,
            policy_sha256=p.policy.sha256,
            data_version=p.data_version,
        )
    except BaseException as err:
        why = reason(err)
        quiet(
            lambda: ledger.release(
                candidate.id, reason=f"no step ran: its prepaid empirical audit failed: {why}"
            )
        )
        if isinstance(err, Refused):
            raise Refused(
                f"release.require_empirical_audit: the run and its empirical audit "
                f"(the same mechanism again) do not fit blocks {', '.join(p.blocks)} together; "
                f"nothing charged ({err})"
            ) from err
        raise


def release_unused(ledger: Ledger, audit: Reservation | None, err: BaseException) -> None:
    """After the candidate's training failed: its audit never ran and no candidate will be
    registered, so the prepaid reservation is returned (best effort: pending still counts)."""
    if audit is None:
        return
    why = reason(err)

    def settle() -> None:
        if ledger.reservation(audit.id).status == "pending":
            ledger.release(audit.id, reason=f"no audit step ran: the candidate failed: {why}")

    quiet(settle)


def prepaid_for(
    ledger: Ledger,
    tags: dict[str, str],
    *,
    dataset: str,
    blocks: list[str],
    mechanism: DpSgdMechanism,
) -> ReservationInfo | None:
    """The reservation prepaid for this candidate's audit (its run's tag) when it is still
    pending on the candidate's dataset and blocks with σ and q of ``mechanism`` and at least
    its steps; None otherwise (the audit then reserves its own charge)."""
    rid = tags.get(TAG_AUDIT_RESERVATION)
    if not rid:
        return None
    try:
        info = ledger.reservation(rid)
    except UsageError:  # an unknown reservation
        return None
    planned = info.mechanism
    if (
        info.status != "pending"
        or info.dataset != dataset
        or sorted(info.blocks) != sorted(blocks)
        or not isinstance(planned, DpSgdMechanism)
        or planned.noise_multiplier != mechanism.noise_multiplier
        or planned.sample_rate != mechanism.sample_rate
        or info.planned_steps < mechanism.steps
    ):
        return None
    return info


def statement(audit: Reservation | None) -> dict[str, Any] | None:
    """The privacy statement's ``empirical_audit`` entry: the prepaid reservation (None when
    the run prepaid none)."""
    if audit is None:
        return None
    return {
        "prepaid": True,
        "reservation": audit.id,
        "ledger_entry": audit.seq,
        "mechanism": audit.mechanism.to_dict(),
        "epsilon_run": audit.epsilon_run,
        "note": (
            "the empirical audit (dpgov audit-model) reproduces this mechanism on the same "
            "blocks; it is reserved with the run and counted in the cumulative ε per block"
        ),
    }


def statement_sentence(s: dict[str, Any]) -> str:
    """One line of the statement's text for a prepaid audit ('' when none)."""
    audit = s.get("empirical_audit")
    if not audit:
        return ""
    return (
        f"Empirical audit prepaid: reservation {audit['reservation']} (entry "
        f"{audit['ledger_entry']}) charges the same mechanism again to these blocks for "
        "`dpgov audit-model`; it is included in the cumulative ε above.\n"
    )
