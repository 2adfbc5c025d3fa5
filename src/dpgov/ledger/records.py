"""The typed records the ledger hands out: blocks, their budget status, reservations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dpgov.accounting import DpSgdMechanism


@dataclass(frozen=True)
class BlockInfo:
    dataset: str
    block: str
    patients: int
    data_version: str | None
    retired: bool


@dataclass(frozen=True)
class BlockStatus:
    dataset: str
    block: str
    patients: int
    retired: bool
    epsilon_spent: float
    epsilon_limit: float
    delta: float
    accountant: str
    charges: int
    pending: int

    @property
    def remaining(self) -> float:
        return max(0.0, self.epsilon_limit - self.epsilon_spent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "block": self.block,
            "patients": self.patients,
            "retired": self.retired,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_limit": self.epsilon_limit,
            "remaining": self.remaining,
            "delta": self.delta,
            "accountant": self.accountant,
            "charges": self.charges,
            "pending": self.pending,
        }


@dataclass(frozen=True)
class Reservation:
    id: str
    seq: int
    dataset: str
    blocks: list[str]
    mechanism: DpSgdMechanism
    epsilon_run: float
    epsilon_after: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reservation": self.id,
            "seq": self.seq,
            "dataset": self.dataset,
            "blocks": self.blocks,
            "mechanism": self.mechanism.to_dict(),
            "epsilon_run": self.epsilon_run,
            "epsilon_after": self.epsilon_after,
        }


@dataclass(frozen=True)
class ReservationInfo:
    id: str
    dataset: str
    blocks: list[str]
    status: str
    mechanism: DpSgdMechanism
    planned_steps: int
    run_id: str | None
    seq: int
