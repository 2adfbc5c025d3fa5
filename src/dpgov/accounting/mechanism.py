"""Mechanisms as frozen value objects.

A mechanism records what a run did to the data, and nothing else. Meanings never change: a new
kind of mechanism is a new class with a new ``kind`` tag, registered with its accounting in
:mod:`dpgov.accounting.kinds`, so old ledger entries keep their meaning forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from dpgov.accounting.errors import AccountingInputError

Neighbouring = Literal["add_remove"]
# No training run takes more optimizer steps; beyond, composition overflows (and the ledger's
# 32-bit step counts would too).
MAX_STEPS = 1_000_000_000


def check_gaussian_fields(m: Any) -> None:
    """The checks every (σ, q, steps) mechanism shares (DP-SGD, the site-level rounds of
    :mod:`dpgov.accounting.federated`): σ > 0 finite, q in (0, 1], 1 <= steps <= MAX_STEPS."""
    sigma, q, steps = m.noise_multiplier, m.sample_rate, m.steps
    if isinstance(sigma, bool) or not isinstance(sigma, int | float):
        raise AccountingInputError(f"noise_multiplier must be a number, found {sigma!r}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise AccountingInputError(f"noise_multiplier must be > 0 and finite, found {sigma!r}")
    if isinstance(q, bool) or not isinstance(q, int | float):
        raise AccountingInputError(f"sample_rate must be a number, found {q!r}")
    if not math.isfinite(q) or not 0 < q <= 1:
        raise AccountingInputError(f"sample_rate must be in (0, 1], found {q!r}")
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise AccountingInputError(f"steps must be an integer, found {steps!r}")
    if steps < 1:
        raise AccountingInputError(f"steps must be >= 1, found {steps!r}")
    if steps > MAX_STEPS:
        raise AccountingInputError(f"steps must be <= {MAX_STEPS:_}, found {steps!r}")


def normalise_gaussian_fields(m: Any) -> None:
    """Ints to floats, so equal mechanisms serialise and hash identically (frozen classes)."""
    object.__setattr__(m, "noise_multiplier", float(m.noise_multiplier))
    object.__setattr__(m, "sample_rate", float(m.sample_rate))


@dataclass(frozen=True, kw_only=True)
class DpSgdMechanism:
    """DP-SGD: the Poisson-subsampled Gaussian mechanism, self-composed ``steps`` times.

    Each step samples every record independently with probability ``sample_rate`` (Poisson
    sampling), clips per-sample gradients to norm C and adds Gaussian noise of standard
    deviation ``noise_multiplier`` · C. Neighbouring datasets differ by adding or removing one
    privacy unit (one patient), which is what Opacus and dp_accounting assume.
    """

    kind: ClassVar[str] = "dp_sgd"
    noise_multiplier: float
    sample_rate: float
    steps: int
    neighbouring: Neighbouring = "add_remove"

    def __post_init__(self) -> None:
        check_gaussian_fields(self)
        if self.neighbouring != "add_remove":
            raise AccountingInputError(
                f"neighbouring must be 'add_remove', found {self.neighbouring!r}"
            )
        normalise_gaussian_fields(self)

    def with_steps(self, steps: int) -> DpSgdMechanism:
        """The same mechanism run for a different number of steps."""
        return replace(self, steps=steps)

    def to_dict(self) -> dict[str, Any]:
        """Lossless: JSON writes floats with ``repr``, which round-trips exactly."""
        return {
            "kind": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "neighbouring": self.neighbouring,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DpSgdMechanism:
        if not isinstance(data, dict) or data.get("kind") != cls.kind:
            raise AccountingInputError(f"not a {cls.kind} mechanism: {data!r}")
        unknown = set(data) - {"kind", "noise_multiplier", "sample_rate", "steps", "neighbouring"}
        if unknown:
            raise AccountingInputError(f"unknown mechanism keys: {sorted(unknown)}")
        return cls(
            noise_multiplier=data["noise_multiplier"],
            sample_rate=data["sample_rate"],
            steps=data["steps"],
            neighbouring=data.get("neighbouring", "add_remove"),
        )

    def to_dp_event(self) -> Any:
        """The equivalent dp_accounting event (imported lazily)."""
        from dp_accounting import dp_event

        return dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(
                self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier)
            ),
            self.steps,
        )
