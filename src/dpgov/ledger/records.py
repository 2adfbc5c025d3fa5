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
    # per-patient accounting (issue 15): epsilon_spent is the enforced ε of the worst class
    # among the block's members, under the policy's accountant
    domain: str = ""
    split: str = "train"
    classes: int = 0
    epsilon_spent_fixed: float = 0.0  # PLD of the worst class: tight for a fixed schedule
    epsilon_spent_adaptive: float = 0.0  # RDP filter ε of the worst class: full adaptivity
    composition: str = "fixed"  # "fixed" for pld/prv, "adaptive" for rdp
    members: bool = True  # False: registered without members (conservative)

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
            "domain": self.domain,
            "split": self.split,
            "classes": self.classes,
            "epsilon_spent_fixed": self.epsilon_spent_fixed,
            "epsilon_spent_adaptive": self.epsilon_spent_adaptive,
            "composition": self.composition,
            "members": self.members,
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


@dataclass(frozen=True)
class PatientClass:
    """Patients of one domain with the same charges: how many, which reservations reached
    them (ledger order), their composed ε (the policy's accountant, at its δ)."""

    domain: str
    count: int
    reservations: list[str]
    epsilon: float
    blocks: list[tuple[str, str]]  # (dataset, block) holding them
    legacy: bool = False  # the pseudo-class of blocks registered without members

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "count": self.count,
            "reservations": self.reservations,
            "epsilon": self.epsilon,
            "blocks": [{"dataset": d, "block": b} for d, b in self.blocks],
            "legacy": self.legacy,
        }


@dataclass(frozen=True)
class PatientCharge:
    seq: int
    reservation: str
    dataset: str
    block: str
    run_id: str | None
    mechanism: dict[str, Any]
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "reservation": self.reservation,
            "dataset": self.dataset,
            "block": self.block,
            "run_id": self.run_id,
            "mechanism": self.mechanism,
            "status": self.status,
        }


@dataclass(frozen=True)
class PatientBlock:
    dataset: str
    block: str
    data_version: str | None
    split: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "block": self.block,
            "data_version": self.data_version,
            "split": self.split,
        }


@dataclass(frozen=True)
class PatientHistory:
    """One patient's whole history: the charges that reached them (released ones included,
    with their status; they cost nothing) and the composed ε of the active ones."""

    pseudonym: str
    domain: str
    epsilon: float
    delta: float
    composition: str
    charges: list[PatientCharge]
    blocks: list[PatientBlock]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pseudonym": self.pseudonym,
            "domain": self.domain,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "composition": self.composition,
            "charges": [c.to_dict() for c in self.charges],
            "blocks": [b.to_dict() for b in self.blocks],
        }
