"""The privacy ledger: append-only, hash-chained, composing each block's charges tightly."""

from dpgov.ledger.chain import Entry, Verification, verify_chain
from dpgov.ledger.records import BlockInfo, BlockStatus, Reservation, ReservationInfo
from dpgov.ledger.reservations import Ledger

__all__ = [
    "BlockInfo",
    "BlockStatus",
    "Entry",
    "Ledger",
    "Reservation",
    "ReservationInfo",
    "Verification",
    "verify_chain",
]
