"""The registry of mechanism kinds: for each kind, everything its accounting needs, in one place.

A mechanism is stored in the ledger as JSON tagged with its ``kind`` (``"dp_sgd"``). A kind
names its class and how it is read back, its dp_accounting event (which RDP is computed from),
its privacy loss distribution, the domain its accounting is defined on (checked before any
accountant computes: :mod:`dpgov.accounting.bounded`) and, where known, a lower bound on its
ε (a cross-check of the PLD). Meanings never change: a new kind of mechanism (a Gaussian
release of evaluation metrics, a patient-level DP-SGD, federated rounds) is a new class
registered under a new name, and a registered name is never registered again, so old ledger
entries keep their meaning.

Every entry ever written carries its kind; a payload without one is refused, as is an unknown
kind (the audit reports such an entry instead of guessing what it charged).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dpgov.accounting.bounded import check_dp_sgd_domain
from dpgov.accounting.errors import AccountingInputError
from dpgov.accounting.federated import (
    FedSiteMechanism,
    fed_site_domain,
    fed_site_lower_bound,
    fed_site_pld,
    fed_site_rdp,
)
from dpgov.accounting.lower_bounds import poisson_gaussian_lower_bound
from dpgov.accounting.mechanism import DpSgdMechanism
from dpgov.accounting.pld import PLD_DISCRETIZATION, poisson_gaussian_pld


@dataclass(frozen=True)
class MechanismKind:
    """How one kind of mechanism is (de)serialised and accounted.

    ``dp_event(m)``: the equivalent dp_accounting event. ``pld(m, discretization, count)``: the
    PLD of ``count`` runs of ``m``. ``rdp(m, orders, count)``: the RDP vector of ``count``
    runs at ``orders`` (default: dp_accounting's RdpAccountant on the event).
    ``epsilon_lower_bound(ms, delta)``: a valid lower bound on ε of the composition of the
    mechanisms ``ms`` (all of this kind), or None. ``domain(m, count)``: raises
    :class:`AccountingInputError` when ``count`` runs of ``m`` are outside what its accounting
    is defined on (None: no limits beyond the class's own validation).
    """

    name: str
    cls: type
    from_dict: Callable[[dict[str, Any]], Any]
    dp_event: Callable[[Any], Any]
    pld: Callable[[Any, float, int], Any]
    rdp: Callable[[Any, Sequence[float], int], list[float]] | None = None
    epsilon_lower_bound: Callable[[Sequence[Any], float], float] | None = None
    domain: Callable[[Any, int], None] | None = None


KINDS: dict[str, MechanismKind] = {}


def register(kind: MechanismKind) -> MechanismKind:
    """Add a kind. A name is registered once: its meaning in stored entries never changes."""
    if kind.name in KINDS:
        raise ValueError(f"mechanism kind {kind.name!r} is registered already")
    if getattr(kind.cls, "kind", None) != kind.name:
        raise ValueError(f"{kind.cls.__name__}.kind must be {kind.name!r}")
    KINDS[kind.name] = kind
    return kind


def kind_named(name: Any) -> MechanismKind:
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise AccountingInputError(f"unknown mechanism kind {name!r}") from None


def kind_of(mechanism: Any) -> MechanismKind:
    """The registered kind of a mechanism object."""
    kind = KINDS.get(getattr(type(mechanism), "kind", None))  # type: ignore[arg-type]
    if kind is None or not isinstance(mechanism, kind.cls):
        raise AccountingInputError(
            f"not a mechanism of a registered kind ({', '.join(KINDS)}): {mechanism!r}"
        )
    return kind


def is_mechanism(obj: Any) -> bool:
    return isinstance(obj, mechanism_types())


def mechanism_types() -> tuple[type, ...]:
    return tuple(k.cls for k in KINDS.values())


def mechanism_type_names() -> str:
    """The registered classes, for messages: "DpSgdMechanism" (or "A or B")."""
    return " or ".join(t.__name__ for t in mechanism_types())


def mechanism_from_dict(data: dict[str, Any]) -> Any:
    """Read a mechanism back from its stored JSON, by its ``kind``."""
    name = data.get("kind") if isinstance(data, dict) else None
    return kind_named(name).from_dict(data)


def mechanism_to_dict(mechanism: Any) -> dict[str, Any]:
    """The stored JSON of a mechanism (lossless; tagged with its kind)."""
    kind_of(mechanism)
    data: dict[str, Any] = mechanism.to_dict()
    return data


def dp_event(mechanism: Any) -> Any:
    """The dp_accounting event of a mechanism."""
    return kind_of(mechanism).dp_event(mechanism)


def check_domain(mechanism: Any, count: int = 1) -> MechanismKind:
    """Raise :class:`AccountingInputError` (exit 2) when ``count`` runs of ``mechanism`` lie
    outside the domain its accounting is defined on; return its kind."""
    kind = kind_of(mechanism)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AccountingInputError(f"count must be an integer >= 1, found {count!r}")
    if kind.domain is not None:
        kind.domain(mechanism, count)
    return kind


def build_pld(mechanism: Any, *, discretization: float = PLD_DISCRETIZATION, count: int = 1) -> Any:
    """The privacy loss distribution of ``count`` runs of ``mechanism``: the one PLD builder,
    used by the ledger's PLD accountant and by the audit's replay alike. Bounded: refused
    (:class:`~dpgov.accounting.AccountingTooCostly`) before building what would exceed the
    limits of :mod:`dpgov.accounting.bounded`."""
    return check_domain(mechanism, count).pld(mechanism, discretization, count)


def rdp_vector(mechanism: Any, orders: Sequence[float], count: int = 1) -> list[float]:
    """The RDP vector at ``orders`` of ``count`` runs of ``mechanism``."""
    kind = check_domain(mechanism, count)
    if kind.rdp is not None:
        return kind.rdp(mechanism, orders, count)
    return _rdp_of_event(kind.dp_event(mechanism), tuple(orders), count)


def epsilon_lower_bound(mechanisms: Sequence[Any], delta: float) -> float:
    """A lower bound on ε at ``delta`` of the composition of ``mechanisms``: the best of each
    kind's bound on its own mechanisms (a composition costs at least any of its parts; 0 for
    kinds that know none)."""
    by_kind: dict[str, list[Any]] = {}
    for m in mechanisms:
        by_kind.setdefault(kind_of(m).name, []).append(m)
    bounds = [
        KINDS[name].epsilon_lower_bound(ms, delta)  # type: ignore[misc]
        for name, ms in by_kind.items()
        if KINDS[name].epsilon_lower_bound is not None
    ]
    return max(bounds, default=0.0)


def _rdp_of_event(event: Any, orders: tuple[float, ...], count: int) -> list[float]:
    from dp_accounting import rdp as dp_rdp

    acc = dp_rdp.RdpAccountant(orders=list(orders))
    acc.compose(event, count)
    return [float(x) for x in acc.rdp]


# ----------------------------------------------------------------------------------- DP-SGD


def _dp_sgd_pld(m: DpSgdMechanism, discretization: float, count: int) -> Any:
    return poisson_gaussian_pld(
        noise_multiplier=m.noise_multiplier,
        sample_rate=m.sample_rate,
        steps=m.steps * count,
        discretization=discretization,
    )


def _dp_sgd_domain(m: DpSgdMechanism, count: int) -> None:
    check_dp_sgd_domain(
        noise_multiplier=m.noise_multiplier, sample_rate=m.sample_rate, steps=m.steps * count
    )


def _dp_sgd_rdp(m: DpSgdMechanism, orders: Sequence[float], count: int) -> list[float]:
    """RDP is additive over steps: ``T · count`` times one step's (as dp_accounting computes
    a self-composed event), one step's computed once per (σ, q, orders) and process."""
    one = _dp_sgd_step_rdp(m.noise_multiplier, m.sample_rate, tuple(orders))
    return [float(x) for x in (m.steps * count) * one]


@functools.lru_cache(maxsize=256)
def _dp_sgd_step_rdp(sigma: float, q: float, orders: tuple[float, ...]) -> Any:
    from dp_accounting import dp_event as events
    from dp_accounting import rdp as dp_rdp

    acc = dp_rdp.RdpAccountant(orders=list(orders))
    acc.compose(events.PoissonSampledDpEvent(q, events.GaussianDpEvent(sigma)))
    return acc.rdp.copy()


def _dp_sgd_lower_bound(ms: Sequence[DpSgdMechanism], delta: float) -> float:
    return poisson_gaussian_lower_bound(
        [(m.noise_multiplier, m.sample_rate, m.steps) for m in ms], delta
    )


DP_SGD = register(
    MechanismKind(
        name=DpSgdMechanism.kind,
        cls=DpSgdMechanism,
        from_dict=DpSgdMechanism.from_dict,
        dp_event=DpSgdMechanism.to_dp_event,
        pld=_dp_sgd_pld,
        rdp=_dp_sgd_rdp,
        epsilon_lower_bound=_dp_sgd_lower_bound,
        domain=_dp_sgd_domain,
    )
)


# ------------------------------------------------------------------ site-level DP-FedAvg

FED_SITE = register(
    MechanismKind(
        name=FedSiteMechanism.kind,
        cls=FedSiteMechanism,
        from_dict=FedSiteMechanism.from_dict,
        dp_event=FedSiteMechanism.to_dp_event,
        pld=fed_site_pld,
        rdp=fed_site_rdp,
        epsilon_lower_bound=fed_site_lower_bound,
        domain=fed_site_domain,
    )
)
