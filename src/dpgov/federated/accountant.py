"""Flower's privacy accountant protocol on dpgov's site ledgers.

Why: Flower 1.42's accounted DP strategies (``DifferentialPrivacyServerSideFixedClipping``
with ``accountant=...``) ask their accountant, before each round, whether the round's Gaussian
release would pass the budget (``would_exceed``) and, after aggregation, to compose it
(``compose``). Flower's own ``RdpAccountant`` keeps that state in process memory and knows one
client-level budget. :class:`LedgerPrivacyAccountant` answers the same calls from the sites'
ledgers instead, so that Flower's own strategy charges dpgov:

- ``would_exceed(event)`` *reserves* the round at every participant
  (:meth:`SiteLedgers.reserve_round`: each on its own ledger, under its policy, with the
  shared-patient check) and returns True, releasing whatever it reserved, when any participant
  refuses; committed state is never touched. Flower then raises ``PrivacyBudgetExhausted``.
- ``compose(event)`` commits the pending reservations (one round at a time).

What a round charges a site's patients (site-level DP): the server clips each site's update
to C and adds Gaussian noise of std σ·C to the sum (Flower: σ·C/n on the average of n).
Removing one patient *replaces* that site's clipped update, a change of norm up to 2C, so for
the site's patients the round is a Gaussian mechanism of sensitivity 2C, i.e. noise multiplier
σ/2 in add/remove units, with no amplification (Flower's accounted strategy refuses client
sampling): ``dpgov.accounting.federated.site_round_mechanism`` at q = 1, or, until that module
is installed, ``DpSgdMechanism(σ/2, sample_rate=1, steps=1)`` (the same mechanism: at q = 1 a
Poisson-sampled Gaussian is the Gaussian). Flower's ``RdpAccountant`` for the same strategy
counts a *site* (client) added or removed, at σ: a different unit and a smaller figure.

``config``: ``PrivacyConfig(target_delta = the sites' δ (the smallest), population_size = the
number of sites, NO_AMPLIFICATION, ADD_OR_REMOVE_ONE, max_epsilon = the smallest per-patient
limit)``. Flower reads only ``sampling_method``, ``population_size`` and ``max_epsilon`` from it.

The engine tells the accountant each round's participants (:meth:`begin_round`), and settles
a round that was reserved but never composed (:meth:`release_pending` when no site trained,
:meth:`abort_pending` after a crash).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from dpgov.accounting import mechanism_from_dict, mechanism_to_dict, site_round_mechanism
from dpgov.errors import UsageError
from dpgov.federated.ledgers import SiteLedgers
from dpgov.federated.types import SiteCharge

_STATE_SCHEMA = 1
_BACKEND = "dpgov-ledger"


def site_level_mechanism(noise_multiplier: float) -> Any:
    """One site-level round without site sampling, as each participant is charged: the
    replace-one Gaussian of the server's σ (:func:`dpgov.accounting.site_round_mechanism`,
    exactly the Gaussian mechanism at σ/2)."""
    return site_round_mechanism(noise_multiplier=noise_multiplier, site_sample_rate=1.0, rounds=1)


class LedgerPrivacyAccountant:
    """A ``flwr.supercore.privacy_accounting.PrivacyAccountant`` whose state is the sites'
    ledgers (this object only holds the round in progress)."""

    def __init__(
        self,
        ledgers: SiteLedgers,
        *,
        mechanism: Callable[[float], Any] | None = None,
    ) -> None:
        from flwr.supercore.privacy_accounting import (
            NeighboringRelation,
            PrivacyConfig,
            SamplingMethod,
        )

        self.ledgers = ledgers
        self._mechanism = mechanism or site_level_mechanism
        budgets = [s.policy.policy.budget for s in ledgers.sites]
        self._config = PrivacyConfig(
            target_delta=min(b.delta for b in budgets),
            population_size=len(ledgers.sites),
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=min(b.epsilon_per_block for b in budgets),
        )
        self._round = 0
        self._participants: list[str] = []
        self._pending: dict[str, SiteCharge] = {}
        self._pending_sigma: float | None = None
        self._releases = 0
        self.last_refused: dict[str, str] = {}  # why each site refused the last would_exceed

    # ------------------------------------------------------------------ the protocol
    @property
    def config(self) -> Any:
        return self._config

    @property
    def num_releases(self) -> int:
        """Rounds this accountant committed (the ledgers hold every charge)."""
        return self._releases

    @property
    def pending(self) -> dict[str, SiteCharge]:
        """The reservations of the round in progress (reserved, not yet composed)."""
        return dict(self._pending)

    def begin_round(self, rnd: int, participants: Sequence[str]) -> None:
        """The engine names the round and its participating sites before Flower configures
        it (Flower's event carries only their number)."""
        if self._pending:
            raise UsageError(
                f"round {self._round} still holds reservations at "
                f"{', '.join(sorted(self._pending))}: compose, release_pending or abort_pending "
                f"it first"
            )
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1:
            raise UsageError(f"round must be an integer >= 1, found {rnd!r}")
        names = list(participants)
        for n in names:
            self.ledgers.site(n)
        if not names or len(set(names)) != len(names):
            raise UsageError(f"a round needs distinct participating sites, found {names!r}")
        self._round = rnd
        self._participants = names
        self.last_refused = {}

    def _check_event(self, event: Any, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count != 1:
            raise ValueError(f"the ledgers charge one round at a time (count 1), found {count!r}")
        if event.population_size != self._config.population_size:
            raise ValueError(
                f"privacy event population_size {event.population_size} is not the "
                f"{self._config.population_size} sites of this run"
            )
        if not self._participants:
            raise ValueError("no round begun: the engine calls begin_round(rnd, participants)")
        if event.sample_size != len(self._participants):
            raise ValueError(
                f"privacy event for {event.sample_size} sites, but round {self._round} has "
                f"{len(self._participants)} participants"
            )

    def would_exceed(self, event: Any, max_epsilon: float | None = None, count: int = 1) -> bool:
        """Reserve the round at every participant; True (everything reserved released) when
        any refuses, or when the largest per-patient ε after it would pass ``max_epsilon``
        (when given). Committed state is never changed."""
        self._check_event(event, count)
        if self._pending:
            raise ValueError(f"round {self._round} is reserved already")
        sigma = float(event.noise_multiplier)
        planned = {n: self._mechanism(sigma) for n in self._participants}
        charges = self.ledgers.reserve_round(self._round, planned)
        self.last_refused = {n: c.refused for n, c in charges.items() if c.refused}
        if (
            not self.last_refused
            and max_epsilon is not None
            and self.get_epsilon(self._config.target_delta) > max_epsilon
        ):
            self.last_refused = {
                n: f"the round would bring a patient past max_epsilon={max_epsilon:g}"
                for n in charges
            }
        if self.last_refused:
            self.ledgers.release_round(charges, reason="round refused: a participant refused")
            return True
        self._pending = charges
        self._pending_sigma = sigma
        return False

    def compose(self, event: Any, count: int = 1) -> None:
        """Commit the round reserved by :meth:`would_exceed` (the release happened)."""
        self._check_event(event, count)
        if not self._pending:
            raise ValueError(f"round {self._round} holds no reservation to compose")
        if float(event.noise_multiplier) != self._pending_sigma:
            raise ValueError(
                f"the release's noise multiplier {event.noise_multiplier} is not the "
                f"{self._pending_sigma} reserved: nothing committed (abort the round)"
            )
        self.ledgers.commit_round(self._pending)
        self._clear()
        self._releases += 1

    def release_pending(self, reason: str) -> None:
        """No site trained in the reserved round: its reservations are returned."""
        self.ledgers.release_round(self._pending, reason)
        self._clear()

    def abort_pending(self, reason: str) -> None:
        """The reserved round crashed: its reservations stay charged."""
        self.ledgers.abort_round(self._pending, reason)
        self._clear()

    def _clear(self) -> None:
        self._pending = {}
        self._pending_sigma = None
        self._participants = []

    def get_epsilon(self, delta: float) -> float:
        """The largest per-patient ε over the sites, as their ledgers enforce it (each site's
        composition mode; pending reservations count), and over the patients shared between
        ledgers, composed across them."""
        if isinstance(delta, bool) or not math.isfinite(delta) or not 0 < delta < 1:
            raise ValueError("delta must be finite and strictly between 0 and 1.")
        d = float(delta)
        sites = self.ledgers.spent(delta=d).values()
        shared = self.ledgers.shared_spent(delta=d).values()
        return max([*sites, *shared], default=0.0)

    def get_delta(self, epsilon: float) -> float:
        raise NotImplementedError(
            "dpgov's ledgers state every ε at a δ fixed by the policy (the RDP filter's or "
            "the tight accountant's ε at δ); they do not invert ε to δ: use get_epsilon(delta)"
        )

    def get_privacy_spent(self, delta: float | None = None) -> Any:
        from flwr.supercore.privacy_accounting import PrivacySpent

        d = self._config.target_delta if delta is None else delta
        modes = sorted({s.policy.policy.budget.mode_for(s.domain) for s in self.ledgers.sites})
        return PrivacySpent(
            epsilon=self.get_epsilon(d),
            delta=d,
            num_releases=self._releases,
            accounting_method=f"{_BACKEND} ({'/'.join(modes)})",
            optimal_order=None,
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, object]:
        """The round in progress (the ledgers hold every charge): JSON-serialisable."""
        return {
            "schema_version": _STATE_SCHEMA,
            "backend": _BACKEND,
            "run_tag": self.ledgers.run_tag,
            "round": self._round,
            "participants": list(self._participants),
            "num_releases": self._releases,
            "pending_sigma": self._pending_sigma,
            "pending": [
                {
                    "site": c.site,
                    "reservation": c.reservation,
                    "blocks": list(c.blocks),
                    "mechanism": mechanism_to_dict(c.mechanism),
                }
                for c in self._pending.values()
            ],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`'s state; every pending reservation must still be
        pending on its site's ledger, holding the mechanism recorded."""
        if state.get("schema_version") != _STATE_SCHEMA or state.get("backend") != _BACKEND:
            raise ValueError("accountant state was not written by this LedgerPrivacyAccountant")
        if state.get("run_tag") != self.ledgers.run_tag:
            raise ValueError(
                f"accountant state of run {state.get('run_tag')!r}, not {self.ledgers.run_tag!r}"
            )
        rnd, releases = state.get("round"), state.get("num_releases")
        participants, pending = state.get("participants"), state.get("pending")
        sigma = state.get("pending_sigma")
        if not (
            isinstance(rnd, int)
            and isinstance(releases, int)
            and isinstance(participants, list)
            and isinstance(pending, list)
            and (sigma is None or isinstance(sigma, float))
        ):
            raise ValueError("invalid accountant state")
        charges: dict[str, SiteCharge] = {}
        for item in pending:
            if not isinstance(item, dict):
                raise ValueError("invalid pending reservation in accountant state")
            site = self.ledgers.site(str(item.get("site")))
            rid = str(item.get("reservation"))
            info = site.ledger.reservation(rid)
            mech = mechanism_from_dict(item.get("mechanism"))  # type: ignore[arg-type]
            if info.status != "pending" or info.mechanism != mech:
                raise ValueError(
                    f"reservation {rid} at site {site.name!r} is {info.status}, not pending "
                    f"with the recorded mechanism"
                )
            charges[site.name] = SiteCharge(site.name, mech, tuple(info.blocks), reservation=rid)
        self._round, self._releases = rnd, releases
        self._participants = [str(p) for p in participants]
        self._pending, self._pending_sigma = charges, sigma


__all__ = ["LedgerPrivacyAccountant", "site_level_mechanism"]
