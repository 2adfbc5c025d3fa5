"""The privacy ledger: append-only, hash-chained, composing each block's charges tightly."""

from dpgov.ledger.chain import Entry, Verification, verify_chain
from dpgov.ledger.store import BlockInfo, BlockStatus, Ledger, Reservation, ReservationInfo

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
