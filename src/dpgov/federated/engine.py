"""The coordinator of a federation: Flower rounds, each site reserving on its own ledger first.

One round, in either privacy mode (docs/federated.md):

1. **who may train**: every site still in the run is eligible. In mode ``site`` with
   ``site_sample_rate`` q, sites are Poisson-sampled with a secret generator; with
   ``amplification`` every *eligible* site is charged the amplified round (sampled or not,
   so whether a site took part stays secret in the release), else only the sampled sites
   pay, unamplified.
2. **reserve**: each charged site reserves the round's mechanism on its own ledger
   (:class:`~dpgov.federated.ledgers.SiteLedgers`); a site that refuses sits the round out
   (and the rounds after: its budget does not come back). Fewer than ``min_sites`` able to
   train: the round's reservations are released (nothing ran) and the run stops.
3. **train** at the participants (Flower's simulation engine: one virtual SuperNode per site).
4. **aggregate**: mode ``record`` averages the sites' DP models (post-processing); mode
   ``site`` clips each site's update to C and adds Gaussian noise from a secret generator:
   without sampling through Flower's own ``DifferentialPrivacyServerSideFixedClipping``,
   whose accountant is dpgov's ledgers (:mod:`dpgov.federated.accountant`); with sampling
   or unequal weights by dpgov's fixed-denominator estimator (Flower's accounted strategy
   refuses both). :attr:`EngineResult.aggregator` says which ran (:mod:`.flower_dp`: on a
   refusal Flower's strategy raises, the refusing sites are dropped and the round is
   configured again with the rest).
5. **commit** what ran (a crash mid-round aborts: the charge stays, conservative).

After the last round each site evaluates the final model on its local test split.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpgov.accounting import DpSgdMechanism, site_round_mechanism
from dpgov.errors import Refused, UsageError
from dpgov.federated.client import build_client_app
from dpgov.federated.flower_dp import AGGREGATOR as FLOWER_AGGREGATOR
from dpgov.federated.flower_dp import FlowerSiteRounds, secret_rng
from dpgov.federated.types import FederatedSpec, OpenSite, RoundRecord, SiteCharge

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.federated.ledgers import SiteLedgers

NODE_WAIT_SECONDS = 180.0  # for every site's Flower node to register
NOISE_SOURCE = "os_entropy"  # the server's noise and site sampling: seeded from `secrets`
RECORD_AGGREGATOR = "dpgov-fedavg"  # mode record: FedAvg of the sites' DP models
FIXED_DENOMINATOR = "dpgov-fixed-denominator"  # mode site with site sampling or records weights


@dataclass
class EngineResult:
    """What the rounds did: the final model, each round, each site's evaluation."""

    arrays: list[Any]
    rounds: list[RoundRecord]
    stopped: str | None  # why the run stopped early (None: all rounds ran)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine: str = "flower-simulation"
    seconds: float = 0.0
    noise_source: str = NOISE_SOURCE
    aggregator: str = FIXED_DENOMINATOR  # which path aggregated the rounds (see aggregator_of)


def aggregator_of(spec: FederatedSpec) -> str:
    """Which path aggregates a run's rounds: Flower's accounted DP strategy where it applies
    (mode site, no site sampling, equal weights, fixed clipping), else dpgov's own."""
    if spec.mode == "record":
        return RECORD_AGGREGATOR
    q = spec.site_sample_rate
    if (q is None or q >= 1) and spec.weights == "equal" and spec.clipping == "fixed":
        return FLOWER_AGGREGATOR
    return FIXED_DENOMINATOR


def record_rate(site: OpenSite, spec: FederatedSpec) -> float:
    """The Poisson rate a site's local DP-SGD runs at (as :func:`client.record_sample_rate`
    computes it from the site's data): units of privacy are patients when a patient holds
    several training records."""
    units = site.patients if site.records > site.patients else site.records
    return min(1.0, spec.batch_size / max(1, units))


def planned_mechanism(
    site: OpenSite, spec: FederatedSpec, *, weights: Sequence[float] | None = None
) -> Any:
    """What one round charges one site's patients. ``weights``: mode ``site`` with
    ``weights: records``, the charged sites' averaging weights (the sensitivity scales with
    the largest)."""
    if spec.mode == "record":
        return DpSgdMechanism(
            noise_multiplier=spec.noise_multiplier,
            sample_rate=record_rate(site, spec),
            steps=spec.local_steps,
        )
    q = spec.site_sample_rate if (spec.site_sample_rate and spec.amplification) else 1.0
    return site_round_mechanism(
        noise_multiplier=spec.noise_multiplier,
        site_sample_rate=q,
        rounds=1,
        weights=list(weights) if weights is not None else None,
    )


class Coordinator:
    """The server side of the rounds; :meth:`run` is the ServerApp's main."""

    def __init__(
        self,
        spec: FederatedSpec,
        sites: Sequence[OpenSite],
        ledgers: SiteLedgers,
        initial: list[Any],
        *,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self.spec = spec
        self.sites = {s.name: s for s in sites}
        self.ledgers = ledgers
        self.arrays = [a.copy() for a in initial]
        self.on_round = on_round
        self.rounds: list[RoundRecord] = []
        self.out: set[str] = set()  # sites that refused: they sit out from then on
        self.stopped: str | None = None
        self.evaluations: dict[str, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self._rng = secret_rng()
        self._sampler = secrets.SystemRandom()
        self.aggregator = aggregator_of(spec)
        self._flower = (
            FlowerSiteRounds(
                ledgers,
                noise_multiplier=spec.noise_multiplier,
                clip=spec.clip,
                min_sites=spec.min_sites,
            )
            if self.aggregator == FLOWER_AGGREGATOR
            else None
        )

    # ------------------------------------------------------------------ the ServerApp main
    def run(self, grid: Any) -> None:
        try:
            nodes = self._nodes(grid)
            for rnd in range(1, self.spec.rounds + 1):
                if not self._round(grid, nodes, rnd):
                    break
            if any(r.charges for r in self.rounds):  # nothing trained: nothing to evaluate
                self._evaluate(grid, nodes)
        except BaseException as err:  # surfaced by run_rounds after the simulation ends
            self.error = err

    def _nodes(self, grid: Any) -> dict[str, int]:
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        deadline = time.monotonic() + NODE_WAIT_SECONDS
        ids = list(grid.get_node_ids())
        while len(ids) < len(self.sites) and time.monotonic() < deadline:
            time.sleep(0.2)  # the simulation's SuperNodes register after the ServerApp starts
            ids = list(grid.get_node_ids())
        msgs = [
            Message(
                content=RecordDict({"q": ConfigRecord({})}),
                message_type=MessageType.QUERY,
                dst_node_id=n,
                group_id="0",
            )
            for n in ids
        ]
        out = {}
        for reply in grid.send_and_receive(msgs):
            _raise_if_error(reply, "query")
            out[str(reply.content["site"]["name"])] = reply.metadata.src_node_id
        missing = set(self.sites) - set(out)
        if missing:
            raise RuntimeError(f"sites without a Flower node: {sorted(missing)}")
        return out

    def _round(self, grid: Any, nodes: dict[str, int], rnd: int) -> bool:
        if self._flower is not None:
            return self._flower_round(grid, nodes, rnd)
        started = time.perf_counter()
        spec = self.spec
        eligible = [n for n in self.sites if n not in self.out]
        sampled = eligible
        q = spec.site_sample_rate
        if spec.mode == "site" and q is not None and q < 1:
            sampled = [n for n in eligible if self._sampler.random() < q]
        charged = eligible if (spec.mode == "record" or spec.amplification) else sampled
        weights = self._site_weights(charged)
        planned = {n: planned_mechanism(self.sites[n], spec, weights=weights) for n in charged}
        charges = self.ledgers.reserve_round(rnd, planned) if planned else {}
        refused = {n: c.refused for n, c in charges.items() if c.refused}
        self.out |= set(refused)
        able = [n for n in eligible if n not in refused]
        record = RoundRecord(
            round=rnd,
            eligible=eligible,
            participants=[n for n in sampled if n not in refused],
            refused={k: str(v) for k, v in refused.items()},
            charges=[c for c in charges.values() if not c.refused],
        )
        reserved = {n: c for n, c in charges.items() if not c.refused}
        if len(able) < spec.min_sites:
            self.ledgers.release_round(reserved, "too few sites could afford the round")
            self._stop(record, len(able), started)
            return False
        try:
            replies = self._train(grid, nodes, rnd, record.participants)
            steps = self._aggregate(record, replies)
        except BaseException as err:
            self.ledgers.abort_round(reserved, f"round {rnd} failed: {err}")
            raise
        self.ledgers.commit_round(reserved, steps)
        self._finish(record, started)
        return True

    def _stop(self, record: RoundRecord, able: int, started: float) -> None:
        """Fewer than ``min_sites`` could afford the round: nothing of it is charged."""
        record.charges = []
        record.participants = []
        self.stopped = (
            f"round {record.round}: {able} site(s) could afford it, fewer than min_sites "
            f"{self.spec.min_sites}"
        )
        self._finish(record, started)

    def _flower_round(self, grid: Any, nodes: dict[str, int], rnd: int) -> bool:
        """A site-level round through Flower's accounted strategy (:mod:`.flower_dp`): it
        reserves at every participant (retrying without the sites that refuse), clips,
        averages, adds secret noise and commits; the record is the coordinator's own path's."""
        import numpy as np

        assert self._flower is not None
        started = time.perf_counter()
        eligible = [n for n in self.sites if n not in self.out]
        cfg = {"round": rnd, "mode": self.spec.mode}
        done = self._flower.configure(rnd, eligible, nodes, self.arrays, cfg, grid)
        self.out |= set(done.refused)
        record = RoundRecord(
            round=rnd,
            eligible=eligible,
            participants=list(done.participants),
            refused=dict(done.refused),
            charges=list(done.charges),
        )
        if not done.messages:
            self._stop(record, len(done.participants), started)
            return False
        try:
            replies = list(grid.send_and_receive(done.messages))
        except BaseException as err:
            self._flower.abort(f"round {rnd} failed: {err}")
            raise
        out = self._flower.aggregate(rnd, replies)
        if out is None:
            failed = [r.error.reason for r in replies if r.has_error()]
            raise RuntimeError(
                f"round {rnd} train: {len(replies)} of {len(done.messages)} replies"
                + (f", a site failed: {failed[0]}" if failed else "")
                + " (nothing released; the round's reservations were returned)"
            )
        self.arrays = [
            np.asarray(x).astype(np.asarray(g).dtype)
            for g, x in zip(self.arrays, out.arrays, strict=True)
        ]
        record.metrics = out.metrics
        self._finish(record, started)
        return True

    def _site_weights(self, charged: Sequence[str]) -> list[float] | None:
        if self.spec.mode != "site" or self.spec.weights == "equal" or not charged:
            return None
        total = sum(self.sites[n].records for n in charged)
        return [self.sites[n].records / total for n in charged]

    def _finish(self, record: RoundRecord, started: float) -> None:
        record.seconds = time.perf_counter() - started
        self.rounds.append(record)
        if self.on_round is not None:
            self.on_round(record)

    def _train(self, grid: Any, nodes: dict[str, int], rnd: int, who: list[str]) -> dict[str, Any]:
        from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

        msgs = []
        for name in who:
            cfg: dict[str, Any] = {"round": rnd, "mode": self.spec.mode}
            if self.spec.mode == "record":
                cfg["sample-rate"] = record_rate(self.sites[name], self.spec)
            msgs.append(
                Message(
                    content=RecordDict(
                        {"arrays": ArrayRecord(self.arrays), "config": ConfigRecord(cfg)}
                    ),
                    message_type=MessageType.TRAIN,
                    dst_node_id=nodes[name],
                    group_id=str(rnd),
                )
            )
        by_node = {v: k for k, v in nodes.items()}
        out = {}
        for reply in grid.send_and_receive(msgs) if msgs else []:
            _raise_if_error(reply, f"round {rnd} train")
            out[by_node[reply.metadata.src_node_id]] = reply
        if set(out) != set(who):
            raise RuntimeError(f"round {rnd}: no reply from {sorted(set(who) - set(out))}")
        return out

    def _aggregate(self, record: RoundRecord, replies: dict[str, Any]) -> dict[str, int] | None:
        """Update the global model; the steps each record-level site actually ran."""
        import numpy as np

        spec = self.spec
        new = {n: r.content["arrays"].to_numpy_ndarrays() for n, r in replies.items()}
        metrics = {n: r.content["metrics"] for n, r in replies.items()}
        if spec.mode == "record":
            steps = {n: int(m["steps"]) for n, m in metrics.items()}
            for n, m in metrics.items():
                rate = record_rate(self.sites[n], spec)
                if float(m["sample-rate"]) != rate or steps[n] > spec.local_steps:
                    raise RuntimeError(
                        f"site {n} ran q={m['sample-rate']}, {steps[n]} steps; it was charged "
                        f"q={rate}, {spec.local_steps} steps"
                    )
            weights = _weights(metrics, spec)
            if new:
                self.arrays = [
                    sum(w * new[n][i] for n, w in weights.items()) for i in range(len(self.arrays))
                ]
            record.metrics = {"loss": _mean(m["loss"] for m in metrics.values())}
            return {n: steps.get(n, spec.local_steps) for n in self.sites if n in steps}
        # site-level DP: clip each update to C, add N(0, σ²C²) to the sum, fixed denominator
        deltas = {}
        for n, arrs in new.items():
            d = [
                np.asarray(a, dtype=np.float64) - np.asarray(g)
                for a, g in zip(arrs, self.arrays, strict=True)
            ]
            norm = math.sqrt(sum(float(np.sum(x * x)) for x in d))
            scale = min(1.0, spec.clip / norm) if norm > 0 else 1.0
            deltas[n] = [x * scale for x in d]
        denominator = self._denominator(record)
        charged = [c.site for c in record.charges] or list(deltas)
        fixed = self._site_weights(charged)
        share = dict(zip(charged, fixed, strict=True)) if fixed else None
        total = [np.zeros_like(np.asarray(g, dtype=np.float64)) for g in self.arrays]
        for n, d in deltas.items():
            # records weights: site i counts w_i · |charged| (w over the charged sites, fixed
            # before anyone refused); the sensitivity is 2C · max w (docs/federated.md)
            w = share[n] * len(charged) if share else 1.0
            for i, x in enumerate(d):
                total[i] += w * x
        std = spec.noise_multiplier * spec.clip
        noisy = [t + self._rng.normal(0.0, std, t.shape) for t in total]
        self.arrays = [
            (np.asarray(g, dtype=np.float64) + x / denominator).astype(np.asarray(g).dtype)
            for g, x in zip(self.arrays, noisy, strict=True)
        ]
        record.metrics = {
            "loss": _mean(m["loss"] for m in metrics.values()),
            "denominator": float(denominator),
            "noise_std": std / denominator,
        }
        return None

    def _denominator(self, record: RoundRecord) -> float:
        """Fixed before the round: with amplified sampling the expected number of sampled
        eligible sites, else the number of sites charged. A site that refused adds nothing
        (its share of the average is lost that round) so no site's weight grows."""
        q = self.spec.site_sample_rate
        if q is not None and q < 1 and self.spec.amplification:
            return max(q * len(record.eligible), 1e-12)
        charged = len(record.charges) + len(record.refused)
        return float(max(1, charged))

    def _evaluate(self, grid: Any, nodes: dict[str, int]) -> None:
        from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

        msgs = [
            Message(
                content=RecordDict(
                    {"arrays": ArrayRecord(self.arrays), "config": ConfigRecord({})}
                ),
                message_type=MessageType.EVALUATE,
                dst_node_id=node,
                group_id="evaluate",
            )
            for node in nodes.values()
        ]
        by_node = {v: k for k, v in nodes.items()}
        for reply in grid.send_and_receive(msgs):
            _raise_if_error(reply, "evaluate")
            site = by_node[reply.metadata.src_node_id]
            self.evaluations[site] = json.loads(str(reply.content["evaluation"]["json"]))


def _weights(metrics: dict[str, Any], spec: FederatedSpec) -> dict[str, float]:
    if spec.weights == "equal" or not metrics:
        return {n: 1.0 / len(metrics) for n in metrics} if metrics else {}
    total = sum(float(m["examples"]) for m in metrics.values())
    return {n: float(m["examples"]) / total for n, m in metrics.items()}


def _mean(values: Any) -> float:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else float("nan")


def _raise_if_error(reply: Any, what: str) -> None:
    if reply.has_error():
        raise RuntimeError(f"{what}: a site failed: {reply.error.reason}")


def run_rounds(
    spec: FederatedSpec,
    sites: Sequence[OpenSite],
    ledgers: SiteLedgers,
    initial: list[Any],
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    quiet: bool = True,
) -> EngineResult:
    """Run the federation in Flower's simulation engine (Ray, one CPU per site actor)."""
    import os

    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    if len(sites) < spec.min_sites:
        raise UsageError(f"too few sites: {len(sites)}, the federation needs {spec.min_sites}")
    started = time.perf_counter()
    coordinator = Coordinator(spec, sites, ledgers, initial, on_round=on_round)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Any) -> None:
        coordinator.run(grid)

    if quiet:
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)  # run_simulation's deprecation
        # Ray's notice that it will stop overriding accelerator variables (no GPU is asked)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    cpus = max(1, min(len(sites), os.cpu_count() or 1))
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    run_simulation(
        server_app=server,
        client_app=build_client_app(spec),
        num_supernodes=len(sites),
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": False},
        },
    )
    if coordinator.error is not None:
        err = coordinator.error
        if isinstance(err, UsageError | Refused):
            raise err
        raise RuntimeError(f"federated run failed: {err}") from err
    return EngineResult(
        arrays=coordinator.arrays,
        rounds=coordinator.rounds,
        stopped=coordinator.stopped,
        evaluations=coordinator.evaluations,
        seconds=time.perf_counter() - started,
        aggregator=coordinator.aggregator,
    )


def charges_of(rounds: Sequence[RoundRecord]) -> dict[str, list[SiteCharge]]:
    """Every site's charges, round by round."""
    out: dict[str, list[SiteCharge]] = {}
    for r in rounds:
        for c in r.charges:
            out.setdefault(c.site, []).append(c)
    return out
