"""Accountants: compose mechanisms into a state, and read ε at a δ from it.

Each accountant keeps an explicit state that composes incrementally (``add``) and serialises
(``dumps``/``loads``), so the ledger can cache a block's composition and extend it with one new
charge instead of recomposing the whole history. State and math stay apart: states are plain
values, accountants are stateless.

- ``pld``: privacy loss distributions (dp_accounting), pessimistic discretisation: the tight
  default. State: the composed PLD's two probability mass functions.
- ``rdp``: Rényi DP (dp_accounting) over a fixed grid of orders. State: the RDP vector; looser
  but robust.
- ``prv``: privacy random variables (Opacus, Gopi et al. 2021). State: the grouped history; ε
  is recomputed from it (PRV composes all at once).

Every accountant checks the mechanism's domain first, and the PLD and PRV accountants bound
their work (:mod:`dpgov.accounting.bounded`): what would need more than one charge may is
refused with :class:`AccountingTooCostly` before it is built, never computed with less care.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from dpgov.accounting import pld
from dpgov.accounting.bounded import check_prv
from dpgov.accounting.errors import AccountantFailed, AccountingInputError, AccountingTooCostly
from dpgov.accounting.kinds import build_pld, check_domain, epsilon_lower_bound, rdp_vector
from dpgov.accounting.mechanism import DpSgdMechanism
from dpgov.accounting.pld import PLD_DISCRETIZATION


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise AccountingInputError(f"delta must be a number, found {delta!r}")
    if not math.isfinite(delta) or not 0 < delta < 1:
        raise AccountingInputError(f"delta must be in (0, 1), found {delta!r}")


class Accountant(Protocol):
    name: str

    def empty(self) -> Any: ...
    def add(self, state: Any, mechanism: DpSgdMechanism, count: int = 1) -> Any: ...
    def epsilon(self, state: Any, delta: float) -> float: ...
    def dumps(self, state: Any) -> bytes: ...
    def loads(self, blob: bytes) -> Any: ...


class PldAccountant:
    """Tight composition with privacy loss distributions (pessimistic estimates)."""

    name = "pld"

    def __init__(self, discretization: float = PLD_DISCRETIZATION) -> None:
        self.discretization = discretization

    def empty(self) -> Any:
        return pld.identity(self.discretization)

    def single(self, mechanism: DpSgdMechanism, count: int = 1) -> Any:
        return build_pld(mechanism, discretization=self.discretization, count=count)

    def add(self, state: Any, mechanism: DpSgdMechanism, count: int = 1) -> Any:
        return pld.compose(state, self.single(mechanism, count))

    def epsilon(self, state: Any, delta: float) -> float:
        _check_delta(delta)
        return float(state.get_epsilon_for_delta(delta))

    def dumps(self, state: Any) -> bytes:
        import numpy as np

        # pylint: disable=protected-access  (dp_accounting has no public serialisation)
        remove = state._pmf_remove.to_dense_pmf()
        add = state._pmf_add.to_dense_pmf()
        header = {
            "accountant": self.name,
            "discretization": self.discretization,
            "symmetric": bool(state._symmetric),
            "pmfs": [
                {
                    "lower_loss": int(p._lower_loss),
                    "infinity_mass": float(p._infinity_mass),
                    "pessimistic": bool(p._pessimistic_estimate),
                    "discretization": float(p._discretization),
                }
                for p in (remove, add)
            ],
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            remove=np.asarray(remove._probs, dtype=np.float64),
            add=np.asarray(add._probs, dtype=np.float64),
        )
        return json.dumps(header).encode() + b"\n" + buf.getvalue()

    def loads(self, blob: bytes) -> Any:
        import numpy as np
        from dp_accounting.pld import pld_pmf
        from dp_accounting.pld import privacy_loss_distribution as pld_dist

        head, _, body = blob.partition(b"\n")
        header = json.loads(head)
        if header.get("accountant") != self.name or header["discretization"] != self.discretization:
            raise AccountingInputError("cached PLD state does not match this accountant")
        arrays = np.load(io.BytesIO(body), allow_pickle=False)
        pmfs = [
            pld_pmf.DensePLDPmf(
                meta["discretization"],
                meta["lower_loss"],
                arrays[key],
                meta["infinity_mass"],
                meta["pessimistic"],
            )
            for meta, key in zip(header["pmfs"], ("remove", "add"), strict=True)
        ]
        if header["symmetric"]:
            return pld_dist.PrivacyLossDistribution(pmfs[0])
        return pld_dist.PrivacyLossDistribution(pmfs[0], pmfs[1])


class RdpAccountant:
    """Rényi DP over dp_accounting's default orders; the composed RDP vector is additive."""

    name = "rdp"

    def _orders(self) -> tuple[float, ...]:
        from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

        return tuple(float(o) for o in DEFAULT_RDP_ORDERS)

    def empty(self) -> Any:
        return [0.0] * len(self._orders())

    def add(self, state: Any, mechanism: DpSgdMechanism, count: int = 1) -> Any:
        added = rdp_vector(mechanism, self._orders(), count)
        return [a + b for a, b in zip(state, added, strict=True)]

    def epsilon(self, state: Any, delta: float) -> float:
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        _check_delta(delta)
        eps, _ = compute_epsilon(list(self._orders()), list(state), delta)
        return float(eps)

    def dumps(self, state: Any) -> bytes:
        return json.dumps({"accountant": self.name, "rdp": list(state)}).encode()

    def loads(self, blob: bytes) -> Any:
        data = json.loads(blob)
        if data.get("accountant") != self.name or len(data["rdp"]) != len(self._orders()):
            raise AccountingInputError("cached RDP state does not match this accountant")
        return [float(x) for x in data["rdp"]]


class PrvAccountant:
    """Opacus's PRV accountant (Gopi et al. 2021); ε is the upper bound of its estimate."""

    name = "prv"
    eps_error = 0.01

    def empty(self) -> Any:
        return {}

    def add(self, state: Any, mechanism: DpSgdMechanism, count: int = 1) -> Any:
        check_domain(mechanism, count)
        if not isinstance(mechanism, DpSgdMechanism):  # Opacus's PRV knows DP-SGD only
            raise AccountingInputError(
                f"the prv accountant composes DP-SGD (add/remove) only, not "
                f"{type(mechanism).kind!r}: use accountant pld or rdp"
            )
        key = (mechanism.noise_multiplier, mechanism.sample_rate)
        new = dict(state)
        new[key] = new.get(key, 0) + mechanism.steps * count
        return new

    def epsilon(self, state: Any, delta: float) -> float:
        _check_delta(delta)
        if not state:
            return 0.0
        from opacus.accountants import PRVAccountant

        acc = PRVAccountant()
        acc.history = [(sigma, q, steps) for (sigma, q), steps in sorted(state.items())]
        check_prv(self._mesh_points(acc, delta), acc.history)
        try:
            with _opacus_quiet():
                return float(acc.get_epsilon(delta, eps_error=self.eps_error))
        except Exception as err:  # Opacus raises bare ValueErrors/RuntimeErrors here
            raise AccountantFailed(
                f"the PRV accountant failed on this history ({err}); use --accountant pld or rdp"
            ) from err

    def _mesh_points(self, acc: Any, delta: float) -> int:
        """The points of the meshes Opacus will discretise the PRVs on: its own domain (L
        from RDP, mesh from eps_error), one mesh per distinct (σ, q); computing it is cheap."""
        from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

        prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in acc.history]
        try:
            with quiet_absl(), _opacus_quiet():
                domain = acc._get_domain(  # pylint: disable=protected-access
                    prvs=prvs,
                    num_self_compositions=[t for _, _, t in acc.history],
                    eps_error=self.eps_error,
                    delta_error=delta / 1000,  # Opacus's default in get_epsilon
                )
            size = int(domain.size)
        except (ValueError, OverflowError, RuntimeError, TypeError) as err:
            raise AccountantFailed(
                f"the PRV accountant cannot lay out its mesh for this history ({err}); use "
                f"--accountant pld or rdp"
            ) from err
        return size * len(prvs)

    def dumps(self, state: Any) -> bytes:
        rows = [[s, q, n] for (s, q), n in sorted(state.items())]
        return json.dumps({"accountant": self.name, "history": rows}).encode()

    def loads(self, blob: bytes) -> Any:
        data = json.loads(blob)
        if data.get("accountant") != self.name:
            raise AccountingInputError("cached PRV state does not match this accountant")
        return {(float(s), float(q)): int(n) for s, q, n in data["history"]}


ACCOUNTANTS: dict[str, type] = {
    "pld": PldAccountant,
    "rdp": RdpAccountant,
    "prv": PrvAccountant,
}


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """Keep dp_accounting's absl warnings off the console. At small σ its RDP accountant warns
    that an order "failed to converge" and is left out: the bound stays valid (only looser)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


@contextlib.contextmanager
def _opacus_quiet() -> Iterator[None]:
    """Keep Opacus's numeric noise off the console: its domain computation overflows to inf on
    wide histories (then refused), and its RDP warns when the optimal order is at the end of
    its grid (the domain is then only wider, so the bound stays valid)."""
    import warnings

    import numpy as np

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        yield


def get_accountant(name: str) -> Accountant:
    try:
        return ACCOUNTANTS[name]()  # type: ignore[no-any-return]
    except KeyError:
        raise AccountingInputError(
            f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}"
        ) from None


def group(mechanisms: Iterable[DpSgdMechanism]) -> list[tuple[DpSgdMechanism, int]]:
    """Identical mechanisms grouped with their counts, in a canonical order.

    Composition is commutative, so a multiset of mechanisms is all a composition depends on;
    self-composing a group at once is far faster than composing its members one by one.
    """
    counts: dict[DpSgdMechanism, int] = {}
    for m in mechanisms:
        counts[m] = counts.get(m, 0) + 1
    return sorted(counts.items(), key=lambda mc: json.dumps(mc[0].to_dict(), sort_keys=True))


def compose(mechanisms: Iterable[DpSgdMechanism], accountant: str | Accountant = "pld") -> Any:
    acc = get_accountant(accountant) if isinstance(accountant, str) else accountant
    state = acc.empty()
    for mech, count in group(mechanisms):
        state = acc.add(state, mech, count)
    return state


def epsilon(
    mechanisms: Iterable[DpSgdMechanism], *, delta: float, accountant: str = "pld"
) -> float:
    """ε at ``delta`` of the composition of ``mechanisms`` (all charged to the same data)."""
    _check_delta(delta)
    acc = get_accountant(accountant)
    mechs = list(mechanisms)
    if not mechs:
        return 0.0
    try:
        return acc.epsilon(compose(mechs, acc), delta)
    except AccountingTooCostly as err:
        raise AccountingTooCostly(f"{err}; {epsilon_bounds(mechs, delta)}") from err


def epsilon_bounds(mechanisms: list[Any], delta: float) -> str:
    """What the cheap bounds say of ε when the tight accountant refuses to compose: a
    hypothesis-test lower bound and the RDP upper bound (both cheap at any size), and, where
    a privacy unit is sampled at all with probability at most δ, the exact ε = 0."""
    with quiet_absl():
        lower = epsilon_lower_bound(mechanisms, delta)
        try:
            upper = RdpAccountant().epsilon(compose(mechanisms, "rdp"), delta)
        except (ArithmeticError, ValueError):
            upper = math.inf
    text = (
        f"its ε at δ={delta:g} is at least {lower:.4g} (a hypothesis test) and at most "
        f"{upper:.4g} (RDP)"
    )
    sampled = never_sampled_delta(mechanisms)
    if sampled is not None and sampled <= delta:
        text += f"; in fact ε = 0: a unit is sampled at all with probability {sampled:.3g} <= δ"
    return text


def never_sampled_delta(mechanisms: list[Any]) -> float | None:
    """P[a privacy unit is sampled in any step] = 1 - Π (1 - q)^T over DP-SGD runs: the
    outputs with and without the unit are identical otherwise, so the composition is
    (0, that)-DP. None when a mechanism is not DP-SGD."""
    if not all(isinstance(m, DpSgdMechanism) for m in mechanisms):
        return None
    log_kept = sum(m.steps * math.log1p(-m.sample_rate) for m in mechanisms if m.sample_rate < 1)
    if any(m.sample_rate >= 1 for m in mechanisms):
        return 1.0
    return -math.expm1(log_kept)


__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "PldAccountant",
    "PrvAccountant",
    "RdpAccountant",
    "compose",
    "epsilon",
    "epsilon_bounds",
    "get_accountant",
    "group",
    "quiet_absl",
]
