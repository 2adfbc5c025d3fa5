"""The site side of a Flower federation: a ClientApp that trains and evaluates on one site's data.

Each virtual SuperNode of Flower's simulation is one site (its ``partition-id`` indexes the
federation's site list). A site never sees another's data, and never touches a ledger here:
the coordinator reserves on the site's ledger before sending it a round (in a deployment the
site's own process would hold that ledger; docs/federated.md, "Scaling out").

Messages (Flower's Message API):

- ``query``: the site names itself (so the server maps node ids to sites).
- ``train``: arrays = the global model; config = the round, the privacy mode and, in mode
  ``record``, the sampling rate the site was charged for. The site refuses to train when
  its own rate differs (a rate above the charge would spend unaccounted privacy). Reply:
  the new arrays and the steps and rate actually run.
- ``evaluate``: the global model on the site's local test split; the evaluation as JSON.

Heavy imports (Flower, torch, Opacus) happen inside :func:`build_client_app`'s handlers, in
the Ray worker processes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from dpgov.federated.evaluation import evaluate_site
from dpgov.federated.local import load_site_data, train_local
from dpgov.federated.types import FederatedSpec

_DATA: dict[str, Any] = {}  # per worker process: each site's data, loaded once


def _site_data(path: str) -> Any:
    if path not in _DATA:
        _DATA[path] = load_site_data(path)
    return _DATA[path]


def build_client_app(spec: FederatedSpec) -> Any:
    """The ClientApp of a federation (picklable: it holds only the spec)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def site_of(context: Context) -> Any:
        return spec.sites[int(context.node_config["partition-id"])]

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        site = site_of(context)
        return Message(
            content=RecordDict({"site": ConfigRecord({"name": site.name})}), reply_to=msg
        )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch

        torch.set_num_threads(1)
        site = site_of(context)
        data = _site_data(site.data)
        content: Any = msg.content
        cfg = content["config"]
        arrays = content["arrays"].to_numpy_ndarrays()
        private = str(cfg["mode"]) == "record"
        if private:
            charged = float(cfg["sample-rate"])
            own = record_sample_rate(data, spec)
            if not math.isclose(own, charged, rel_tol=0, abs_tol=1e-15):
                raise RuntimeError(
                    f"site {site.name}: sampling rate {own} differs from the {charged} it was "
                    f"charged for: not training"
                )
        result = train_local(arrays, data, spec, private=private, round_index=int(cfg["round"]))
        weight = 1 if spec.weights == "equal" else int(result.examples)
        metrics = MetricRecord(
            {
                "num-examples": weight,
                "steps": int(result.steps),
                "sample-rate": float(result.sample_rate),
                "loss": float(result.loss),
                "examples": int(result.examples),
            }
        )
        return Message(
            content=RecordDict({"arrays": ArrayRecord(result.arrays), "metrics": metrics}),
            reply_to=msg,
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        import torch

        torch.set_num_threads(1)
        site = site_of(context)
        data = _site_data(site.data)
        content: Any = msg.content
        arrays = content["arrays"].to_numpy_ndarrays()
        ev = evaluate_site(site.name, arrays, data, spec)
        return Message(
            content=RecordDict(
                {"evaluation": ConfigRecord({"json": json.dumps(asdict(ev), default=float)})}
            ),
            reply_to=msg,
        )

    return app


def record_sample_rate(data: Any, spec: FederatedSpec) -> float:
    """The Poisson rate of a site's local DP-SGD: ``batch_size`` expected units of privacy
    (patients when a patient holds several records, else records) out of the site's, at most
    1. The coordinator charges this rate; the site trains at it."""
    return min(1.0, spec.batch_size / data.units)
