"""The privacy ledger: append-only, hash-chained, composing each block's charges tightly."""

from dpgov.ledger.chain import Entry, Verification, verify_chain
from dpgov.ledger.membership import MembershipProblem, members_digest
from dpgov.ledger.records import (
    BlockInfo,
    BlockStatus,
    PatientClass,
    PatientHistory,
    Reservation,
    ReservationInfo,
)
from dpgov.ledger.reservations import Ledger

__all__ = [
    "BlockInfo",
    "BlockStatus",
    "Entry",
    "Ledger",
    "MembershipProblem",
    "PatientClass",
    "PatientHistory",
    "Reservation",
    "ReservationInfo",
    "Verification",
    "members_digest",
    "verify_chain",
]
