"""One federated run: open the sites → rounds → register → gate per site.

:func:`run_federated` is the only place this sequence is written; ``dpgov federated run``,
``dpgov demo --federated`` and the Prefect flow (``pipelines.federated``) call it.

- Every site is opened, checked and validated before the first reservation
  (:mod:`dpgov.federated.sites`): bad input is one line, exit 2, nothing charged anywhere.
- The rounds (:mod:`dpgov.federated.engine`) reserve at each site before it trains; if the
  first round cannot be afforded by ``min_sites`` sites the run is refused (exit 1) with
  nothing charged; a later shortfall ends the run early, and says so.
- The final model is logged to MLflow with every site's charges (reservation ids and
  ledger entries), data versions and ε, registered as a candidate, and judged by every
  site's gate (:mod:`dpgov.federated.gate`).
"""

from __future__ import annotations

import getpass
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dpgov.errors import Refused, UsageError
from dpgov.federated import gate as fgate
from dpgov.federated.engine import EngineResult, charges_of, run_rounds
from dpgov.federated.ledgers import SiteLedgers
from dpgov.federated.local import build_site_model, get_arrays, load_site_data, set_arrays
from dpgov.federated.sites import close_sites, open_sites
from dpgov.federated.types import FederatedSpec, OpenSite, RoundRecord
from dpgov.redaction import redact
from dpgov.tracking import runs
from dpgov.tracking.anchor import try_record_anchor
from dpgov.tracking.store import mlflow_client
from dpgov.training.governed import StepRunner, call_step

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Sequence


@dataclass
class FederatedSummary:
    """What a federated run did; :meth:`to_dict` is ``dpgov federated run --json``."""

    mode: str
    rounds: int  # rounds that trained
    rounds_planned: int
    stopped: str | None
    sites: list[dict[str, Any]]
    round_log: list[dict[str, Any]]
    gate: dict[str, Any]
    run_id: str | None
    model_name: str
    model_version: str | None
    privacy: dict[str, Any]
    seconds: float
    engine: str
    aggregator: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_federated(
    spec: FederatedSpec,
    *,
    register: bool = True,
    on_round: Callable[[RoundRecord], None] | None = None,
    step: StepRunner = call_step,
) -> FederatedSummary:
    """Run the federation (module docstring). Raises UsageError (exit 2) for bad input and
    Refused (exit 1) when the budgets refuse the first round. ``step`` runs each step (the
    Prefect flow makes each a task: ``open-sites``, ``rounds``, ``track-and-gate``); only
    opening the sites, which charges nothing, may retry."""
    started = time.perf_counter()
    sites = step("open-sites", open_sites, spec, retry=True)
    try:
        fixed = [s.name for s in sites if s.policy.policy.budget.composition == "fixed"]
        if fixed:
            raise UsageError(
                f"site(s) {', '.join(fixed)}: budget.composition fixed charges only schedules "
                f"committed in advance (`dpgov ledger plan`), which a federation's rounds are "
                f"not; federated runs need budget.composition adaptive"
            )
        datas = {s.name: load_site_data(s.path) for s in sites}
        _same_features(datas)
        first = datas[sites[0].name]
        initial = get_arrays(build_site_model(spec, first))
        author = getpass.getuser()
        run_id = _start_run(spec, sites, author)  # every reservation names it
        try:
            ledgers = SiteLedgers(sites, run_tag=run_id)
            result = step("rounds", run_rounds, spec, sites, ledgers, initial, on_round=on_round)
            trained = [r for r in result.rounds if r.charges]
            if not trained:
                raise Refused(
                    f"no round could run: {result.stopped or 'every site refused'}; nothing "
                    f"was charged at any site"
                )
            spent = ledgers.spent()
        except BaseException as err:
            runs.end_run(run_id, failed=True, reason=str(err))
            raise
        summary = step(
            "track-and-gate",
            _summarise,
            spec,
            sites,
            result,
            spent,
            register=register,
            run_id=run_id,
            author=author,
        )
        for s in sites:  # each site's chain head, anchored outside its database (as a run's
            # commit is; a failure is only logged, and the audit reports unanchored commits)
            try_record_anchor(*s.ledger.head(), ledger=s.ledger)
    finally:
        close_sites(sites)
    summary.seconds = time.perf_counter() - started
    return summary


def _same_features(datas: dict[str, Any]) -> None:
    widths = {name: int(d.n_features) for name, d in datas.items()}
    if len(set(widths.values())) > 1:
        raise UsageError(
            "sites disagree on the model's inputs: "
            + ", ".join(f"{n} has {w} features" for n, w in widths.items())
            + " (prepare every site under one contract)"
        )


def _summarise(
    spec: FederatedSpec,
    sites: Sequence[OpenSite],
    result: EngineResult,
    spent: dict[str, float],
    *,
    register: bool,
    run_id: str,
    author: str,
) -> FederatedSummary:
    charges = charges_of(result.rounds)
    version = _track(
        spec, sites, result, spent, charges, register=register, run_id=run_id, author=author
    )
    gaps = [fgate.site_gap(result.evaluations, m) for m in ("auroc", "fnr")]
    decisions = [
        fgate.decide_site(
            s,
            model=spec.model_name,
            version=version,
            author=author,
            charges=charges.get(s.name, []),
            evaluation=result.evaluations.get(s.name),
            site_gaps=gaps,
            noise_source=result.noise_source,
        )
        for s in sites
    ]
    decisions = fgate.record_decisions(
        sites, decisions, model=spec.model_name, version=version, run_id=run_id
    )
    if version is not None:
        _tag_version(spec.model_name, version, decisions)
    rows = []
    for s in sites:
        ev = result.evaluations.get(s.name) or {}
        mine = charges.get(s.name, [])
        rows.append(
            {
                "site": s.name,
                "dataset": s.dataset,
                "data_version": s.data_version,
                "patients": s.patients,
                "records": s.records,
                "epsilon_spent": float(spent.get(s.name, 0.0)),
                "epsilon_limit": float(s.policy.policy.budget.epsilon_per_block),
                "delta": float(s.policy.policy.budget.delta),
                "rounds_charged": len(mine),
                "reservations": [c.reservation for c in mine],
                "auroc": ev.get("auroc"),
                "test_n": ev.get("n"),
                "ledger": _redacted(s.spec.ledger_url),
            }
        )
    return FederatedSummary(
        mode=spec.mode,
        rounds=sum(1 for r in result.rounds if r.charges),
        rounds_planned=spec.rounds,
        stopped=result.stopped,
        sites=rows,
        round_log=[_round_dict(r, secret=_secret_sampling(spec)) for r in result.rounds],
        gate={**fgate.gate_table(decisions), "site_gaps": gaps},
        run_id=run_id,
        model_name=spec.model_name,
        model_version=version,
        privacy=privacy_statement(spec),
        seconds=0.0,
        engine=result.engine,
        aggregator=result.aggregator,
        warnings=[result.stopped] if result.stopped else [],
    )


def _released(metrics: dict[str, float]) -> dict[str, float]:
    """A round's metrics that may be recorded: the sites' training loss is an exact statistic
    of their patients that no charge covers, so it stays in the coordinator."""
    return {k: v for k, v in metrics.items() if k != "loss"}


def _secret_sampling(spec: FederatedSpec) -> bool:
    """Amplified site sampling: which sites were sampled is part of what the noise hides."""
    q = spec.site_sample_rate
    return spec.mode == "site" and q is not None and q < 1 and spec.amplification


def _round_dict(r: RoundRecord, *, secret: bool = False) -> dict[str, Any]:
    """A round as recorded; under amplified sampling the sampled sites are not written
    anywhere (every eligible site is charged, and the record says only that)."""
    return {
        "round": r.round,
        "eligible": r.eligible,
        "participants": "secret (amplified site sampling)" if secret else r.participants,
        "refused": r.refused,
        "charged": [c.site for c in r.charges],
        "metrics": _released(r.metrics),
        "seconds": round(r.seconds, 3),
    }


def _redacted(url: str | None) -> str:
    return "default (SQLite in the site's home)" if url is None else redact(url)


def privacy_statement(spec: FederatedSpec) -> dict[str, Any]:
    """Both guarantees, and what each protects (docs/federated.md)."""
    if spec.mode == "record":
        return {
            "unit": "patient",
            "guarantee": "record-level DP at each site (patient-level where a patient holds "
            "several records)",
            "protects": "each patient of each site: the released model and every round's "
            "update change little whether or not one patient's records were used; charged "
            "on that site's ledger only (sites hold disjoint patients; a patient seen at "
            "two sites is charged at both and composed across their ledgers)",
            "does_not_protect": "a whole site's participation or its aggregate statistics",
            "mechanism": f"Opacus DP-SGD, σ={spec.noise_multiplier}, C={spec.clip}, "
            f"{spec.local_steps} steps per round",
        }
    sampled = spec.site_sample_rate is not None and spec.site_sample_rate < 1
    return {
        "unit": "patient",
        "guarantee": "site-level DP-FedAvg seen by one patient (replace-one: removing a "
        "patient replaces the site's clipped update, sensitivity 2C)",
        "protects": "each patient of each site against the released model and every noisy "
        "aggregate; with amplification, also whether their site took part in a round",
        "does_not_protect": "a patient against their own site (sites train without noise "
        "and see their own data); a site's update before the server adds noise",
        "mechanism": f"server clipping C={spec.clip}, Gaussian noise σ={spec.noise_multiplier}"
        + (
            f", Poisson site sampling q={spec.site_sample_rate}"
            + (" (amplified)" if spec.amplification else " (unamplified)")
            if sampled
            else ""
        ),
    }


def _start_run(spec: FederatedSpec, sites: Sequence[OpenSite], author: str) -> str:
    """The federation's MLflow run, opened before the first round: every site reservation
    names it. Tagged ``dpgov.private: federated``: its charges are on the site ledgers, each
    reservation naming this run (``federated/charges.json`` lists them)."""
    params = {
        "federated.mode": spec.mode,
        "federated.rounds": spec.rounds,
        "federated.local_steps": spec.local_steps,
        "federated.noise_multiplier": spec.noise_multiplier,
        "federated.clip": spec.clip,
        "federated.site_sample_rate": spec.site_sample_rate,
        "federated.amplification": spec.amplification,
        "federated.weights": spec.weights,
        "federated.batch_size": spec.batch_size,
        "federated.min_sites": spec.min_sites,
        "federated.sites": ",".join(s.name for s in sites),
    }
    tags = {
        "dpgov.federated": "true",
        "dpgov.private": "federated",
        "dpgov.author": author,
        **{f"dpgov.site.{s.name}.data_version": s.data_version for s in sites},
    }
    return runs.start_run(
        experiment=spec.experiment, run_name=f"federated-{spec.mode}", params=params, tags=tags
    )


def _track(
    spec: FederatedSpec,
    sites: Sequence[OpenSite],
    result: EngineResult,
    spent: dict[str, float],
    charges: dict[str, Any],
    *,
    register: bool,
    run_id: str,
    author: str,
) -> str | None:
    """The end of the federation's MLflow run: what the rounds did, per-round and per-site
    metrics, the site charges as tags and a JSON artifact, the model registered as a
    candidate; the version (None when not registered)."""
    import numpy as np
    import torch

    runs.log_params(
        run_id,
        {
            "noise_source": result.noise_source,
            "federated.aggregator": result.aggregator,
            "federated.engine": result.engine,
        },
    )
    runs.set_tags(
        run_id, {f"dpgov.site.{s.name}.epsilon": f"{spent.get(s.name, 0.0):.6g}" for s in sites}
    )
    version = None
    try:
        for r in result.rounds:
            released = _released(r.metrics)
            runs.log_metrics(run_id, {f"round.{k}": v for k, v in released.items()}, step=r.round)
        for site, ev in result.evaluations.items():
            metrics = {
                f"site.{site}.{k}": float(v)
                for k, v in ev.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            runs.log_metrics(run_id, metrics)
        runs.log_json(
            run_id,
            {
                "sites": {
                    s.name: {
                        "dataset": s.dataset,
                        "data_version": s.data_version,
                        "epsilon": spent.get(s.name, 0.0),
                        "charges": [
                            {
                                "reservation": c.reservation,
                                "mechanism": c.mechanism.to_dict(),
                                "blocks": list(c.blocks),
                            }
                            for c in charges.get(s.name, [])
                        ],
                    }
                    for s in sites
                },
                "rounds": [_round_dict(r, secret=_secret_sampling(spec)) for r in result.rounds],
                "privacy": privacy_statement(spec),
                "evaluations": result.evaluations,
                "author": author,
                "noise_source": result.noise_source,
            },
            "federated/charges.json",
        )
        if register:
            data = load_site_data(sites[0].path)
            model = build_site_model(spec, data)
            set_arrays(model, result.arrays)
            model.eval()
            example = np.array(data.test.x[:2] if len(data.test.x) else data.train.x[:2])
            with torch.no_grad():
                ref = runs.log_model(
                    run_id,
                    model,
                    input_example=example,
                    register_as=spec.model_name,
                    version_tags={
                        "dpgov.federated": "true",
                        "dpgov.author": author,
                        "dpgov.federated.run": run_id,
                        **{f"dpgov.site.{s.name}.data_version": s.data_version for s in sites},
                        **{
                            f"dpgov.site.{s.name}.epsilon": f"{spent.get(s.name, 0.0):.6g}"
                            for s in sites
                        },
                    },
                )
            version = ref.version if ref is not None else None
    except BaseException as err:
        runs.end_run(run_id, failed=True, reason=str(err))
        raise
    runs.end_run(run_id)
    return version


def _tag_version(model: str, version: str, decisions: Sequence[fgate.SiteDecision]) -> None:
    client = mlflow_client()
    allowed = all(d.allowed for d in decisions)
    client.set_model_version_tag(model, version, "dpgov.gate.allowed", str(allowed).lower())
    for d in decisions:
        client.set_model_version_tag(
            model, version, f"dpgov.gate.site.{d.site}", "allowed" if d.allowed else "blocked"
        )
