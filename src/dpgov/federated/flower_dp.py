"""Site-level rounds through Flower's own DP strategy, charging dpgov's site ledgers.

Why: Flower's own DP strategies should charge dpgov. A site-level round *without*
site sampling and with equal weights is exactly what Flower 1.42's accounted
``DifferentialPrivacyServerSideFixedClipping`` supports (it refuses amplification and unequal
weights), so such rounds run through it, with
:class:`~dpgov.federated.accountant.LedgerPrivacyAccountant` as its accountant: Flower's
``configure_train`` asks ``would_exceed`` (every participant reserves on its own ledger) and
its ``aggregate_train`` clips each site's update to C, averages with FedAvg, adds noise and
calls ``compose`` (the reservations commit). Two things are changed, each for a reason:

- **the noise** (:meth:`_add_noise_to_aggregated_arrays`): Flower's draws from
  ``np.random``'s global state, which any code in the process can seed or read, so the noise
  would not be secret. Ours draws the same N(0, (σ·C/n)²) per coordinate (Flower's
  ``compute_stdv``) from a generator seeded from the OS (``secrets``), as the coordinator's own
  path does. Updates are clipped and averaged in float64 (Flower would clip in the model's
  float32, where the clipped norm can land a rounding step above C).
- **who trains**: FedAvg samples nodes from the grid; here ``configure_train`` builds messages
  for the round's participants only (the sites still in the run that reserved), and
  ``num_sampled_clients`` is set to their number every round, so Flower's event names the
  right sample size and its strict reply check expects exactly them.

Refusals: when a participant's ledger refuses, Flower raises ``PrivacyBudgetExhausted`` (the
accountant has released whatever it reserved). :meth:`FlowerSiteRounds.configure` reads
``accountant.last_refused``, drops those sites (they sit the run out, as in the coordinator's
own path), names the round again with the rest and retries; below ``min_sites`` it gives up
with nothing reserved. A round whose aggregation Flower skips (a site failed, or replies are
missing: ``aggregate_train`` returns None) released nothing, but its sites trained and sent
their updates, so its reservations are aborted (they stay charged, conservative), as is any
crash after reserving.

The privacy meaning is the coordinator's (docs/federated_accounting.md): removing a patient
replaces their site's clipped update (a change of norm up to 2C in the sum, 2C/n in the
average), and the noise is σ·C/n on the average, so each participant's patients are charged
``site_round_mechanism(σ, q=1)``, a Gaussian of noise multiplier σ/2. The denominator n is the
number of sites that reserved the round (those that refused before it add nothing), where the
coordinator's fixed-denominator path also counts the refused ones; either way the ratio of
noise to sensitivity is σ/2.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpgov.federated.accountant import LedgerPrivacyAccountant
from dpgov.federated.ledgers import SiteLedgers
from dpgov.federated.types import SiteCharge

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

AGGREGATOR = "flower-dp-fixed-clipping"


def secret_rng() -> np.random.Generator:
    """A generator seeded from the OS: nothing in the process can seed or replay it."""
    import numpy as np

    return np.random.Generator(np.random.PCG64DXSM(secrets.randbits(128)))


@functools.cache
def strategy_classes() -> tuple[type, type]:
    """``(ParticipantsFedAvg, SecretNoiseFixedClipping)``, built on first use so that Flower
    is imported only when a run needs it."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
    from flwr.supercore.differential_privacy import compute_stdv

    class ParticipantsFedAvg(FedAvg):  # type: ignore[misc]
        """FedAvg (its own ``aggregate_train``: Flower's accounted strategy requires it)
        whose ``configure_train`` targets the node ids the engine names for the round."""

        def __init__(self) -> None:
            super().__init__(
                fraction_train=1.0,  # configure_evaluate is never called: the engine
                min_train_nodes=1,  # has each site evaluate once, after the last round
                min_available_nodes=1,
                weighted_by_key="num-examples",  # the client sends 1: equal weights
            )
            self.node_ids: list[int] = []

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> list[Message]:
            config["server-round"] = server_round
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            return [
                Message(
                    content=record,
                    message_type=MessageType.TRAIN,
                    dst_node_id=node,
                    group_id=str(server_round),
                )
                for node in self.node_ids
            ]

    def as_float64(record: ArrayRecord) -> ArrayRecord:
        return ArrayRecord(
            {
                k: Array(np.asarray(v, dtype=np.float64))
                for k, v in zip(record.keys(), record.to_numpy_ndarrays(), strict=True)
            }
        )

    class SecretNoiseFixedClipping(DifferentialPrivacyServerSideFixedClipping):  # type: ignore[misc]
        """Flower's server-side fixed clipping with its noise from a secret generator."""

        def __init__(
            self,
            strategy: ParticipantsFedAvg,
            noise_multiplier: float,
            clipping_norm: float,
            num_sampled_clients: int,
            *,
            accountant: LedgerPrivacyAccountant,
            rng: np.random.Generator | None = None,
        ) -> None:
            super().__init__(
                strategy,
                noise_multiplier,
                clipping_norm,
                num_sampled_clients,
                accountant=accountant,
            )
            self.rng = rng if rng is not None else secret_rng()
            self.last_noise_std: float | None = None

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            for reply in replies:
                if not reply.has_error():
                    for name, rec in list(reply.content.array_records.items()):
                        reply.content[name] = as_float64(rec)
            self.current_arrays = as_float64(self.current_arrays)
            return super().aggregate_train(server_round, replies)

        def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
            std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
            arrays = aggregated_arrays.to_numpy_ndarrays()
            noisy = [
                np.asarray(a, dtype=np.float64) + self.rng.normal(0.0, std, np.shape(a))
                for a in arrays
            ]
            self.last_noise_std = std
            return ArrayRecord(
                {k: Array(v) for k, v in zip(aggregated_arrays.keys(), noisy, strict=True)}
            )

    return ParticipantsFedAvg, SecretNoiseFixedClipping


@dataclass
class Configured:
    """A round as :meth:`FlowerSiteRounds.configure` left it: the messages to send (empty:
    fewer than ``min_sites`` could afford it, nothing reserved), who reserved, who refused."""

    messages: list[Any]
    participants: list[str]
    refused: dict[str, str] = field(default_factory=dict)
    charges: list[SiteCharge] = field(default_factory=list)


@dataclass
class Aggregated:
    """What a round released: the new global arrays (float64) and its metrics."""

    arrays: list[Any]
    metrics: dict[str, float]


class FlowerSiteRounds:
    """One run's site-level rounds through Flower's accounted strategy (state: the strategy
    and the accountant; the engine keeps the model, the rounds and who sits out)."""

    def __init__(
        self,
        ledgers: SiteLedgers,
        *,
        noise_multiplier: float,
        clip: float,
        min_sites: int,
        rng: np.random.Generator | None = None,
    ) -> None:
        fedavg_cls, dp_cls = strategy_classes()
        self.accountant = LedgerPrivacyAccountant(ledgers)
        self.fedavg = fedavg_cls()
        self.strategy = dp_cls(
            self.fedavg,
            noise_multiplier,
            clip,
            max(1, len(ledgers.sites)),
            accountant=self.accountant,
            rng=rng,
        )
        self.min_sites = min_sites

    def configure(
        self,
        rnd: int,
        participants: list[str],
        nodes: dict[str, int],
        arrays: list[Any],
        config: dict[str, Any],
        grid: Any = None,
    ) -> Configured:
        """Flower's ``configure_train`` for the participants, retried without the sites that
        refused until every one left reserved or fewer than ``min_sites`` are left."""
        from flwr.app import ArrayRecord, ConfigRecord
        from flwr.serverapp.exception import PrivacyBudgetExhausted

        refused: dict[str, str] = {}
        who = list(participants)
        while who and len(who) >= self.min_sites:
            self.accountant.begin_round(rnd, who)
            self.fedavg.node_ids = [nodes[n] for n in who]
            self.strategy.num_sampled_clients = len(who)
            try:
                messages = list(
                    self.strategy.configure_train(
                        rnd, ArrayRecord([a.copy() for a in arrays]), ConfigRecord(config), grid
                    )
                )
            except PrivacyBudgetExhausted:
                out = dict(self.accountant.last_refused)
                if not out or not set(out) <= set(who):
                    raise
                refused.update(out)
                who = [n for n in who if n not in out]
                continue
            return Configured(messages, who, refused, list(self.accountant.pending.values()))
        return Configured([], who, refused)

    def aggregate(self, rnd: int, replies: list[Any]) -> Aggregated | None:
        """Flower's ``aggregate_train`` (clip, FedAvg, secret noise, ``compose``). None when
        Flower skipped the aggregation: nothing was released, yet the sites trained, so the
        reservations are aborted (they stay charged), as after anything raised."""
        try:
            arrays, metrics = self.strategy.aggregate_train(rnd, replies)
        except BaseException as err:
            self.abort(f"round {rnd} failed while aggregating: {err}")
            raise
        if arrays is None:
            why = [str(r.error.reason) for r in replies if r.has_error()]
            # the sites trained on their patients and sent unnoised updates: the charge stays
            # (conservative; a crash never undercounts), as in the coordinator's own path
            self.accountant.abort_pending(
                f"round {rnd}: Flower skipped the aggregation (nothing released): "
                + ("; ".join(why) if why else f"{len(replies)} replies")
            )
            return None
        values = dict(metrics or {})
        n = int(self.strategy.num_sampled_clients)
        return Aggregated(
            arrays=arrays.to_numpy_ndarrays(),
            metrics={
                "loss": float(values.get("loss", float("nan"))),
                "denominator": float(n),
                "noise_std": float(self.strategy.last_noise_std or 0.0),
            },
        )

    def abort(self, reason: str) -> None:
        """A crash after the round reserved: its reservations stay charged."""
        if self.accountant.pending:
            self.accountant.abort_pending(reason)


__all__ = [
    "AGGREGATOR",
    "Aggregated",
    "Configured",
    "FlowerSiteRounds",
    "secret_rng",
    "strategy_classes",
]
