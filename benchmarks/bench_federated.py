"""Federated runs measured end to end (issue 20, "Measure"): utility, accounting, wall time.

Every figure comes from real ``run_federated`` calls (Flower's simulation engine on Ray, a
SQLite ledger per site, Great Expectations validation, MLflow, the per-site gate) in a fresh
``DPGOV_HOME`` under /tmp with a fixed test pseudonym key. Three parts, one section each:

1. covid_testing, 4 sites (full cohort): record-level federation against centralised
   patient-level DP-SGD on the pooled training rows, σ calibrated to the federation's largest
   site ε (on the ledger's RDP filter by bisection, and on the PLD with dpgov's calibrate),
   all scored by the federation's own evaluation; and a site-level run (DP-FedAvg), σ set so
   that its worst patient (held at the most sites, charged at each) reaches the record run's
   worst shared patient (calibrated per site instead, shared patients overspent and the
   ledgers stopped the run after 4 of 8 rounds: the first run of this script).
2. That site-level run under Flower's ``RdpAccountant`` beside the ledgers' per-patient ε.
3. Wall time per round with 3, 4 and 10 sites (10: flchain's 5 sites prepared twice with one
   key, so every patient is at two sites: a timing run, not a real federation).

Run: .venv/bin/python benchmarks/bench_federated.py (5 min on 2 cores at load average 4; 9 at 7).
Writes its three sections of benchmarks/RESULTS_federated.md and keeps the others.
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, stamp

HOME = Path(tempfile.mkdtemp(prefix="dpgov-bench-federated-"))
os.environ["DPGOV_HOME"] = str(HOME / "home")  # before dpgov reads it
os.environ["DPGOV_PSEUDONYM_KEY"] = "00" * 32  # fixed test key, as /tmp/fed1/smoke.py

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from dpgov import accounting  # noqa: E402
from dpgov.accounting.filters import FILTER_ORDERS, filter_epsilon  # noqa: E402
from dpgov.data.federated_cohort import PreparedSite, prepare_sites  # noqa: E402
from dpgov.federated import local  # noqa: E402
from dpgov.federated.engine import EngineResult, charges_of  # noqa: E402
from dpgov.federated.evaluation import evaluate_site, federated_fairness, site_scores  # noqa: E402
from dpgov.federated.local import LocalData  # noqa: E402
from dpgov.federated.run import FederatedSummary, run_federated  # noqa: E402
from dpgov.federated.spec import parse_spec  # noqa: E402
from dpgov.federated.types import FederatedSpec, RoundRecord  # noqa: E402
from dpgov.training.inputs import Arrays  # noqa: E402
from dpgov.training.patient_level import records_per_patient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "RESULTS_federated.md"
HEADINGS = (
    "## Utility: federated vs centralised DP at the same per-patient ε",
    "## The site-level run under dpgov's and Flower's accountants",
    "## Wall time per round",
)

SIGMA = 1.0  # record mode's DP-SGD noise multiplier at each site
ROUNDS = 8
LOCAL_STEPS = 10
BATCH = 64  # expected patients per local step
LR = 0.5  # the spec default 0.05 barely moves the model in 80 steps (measured while writing)
SEED = 1  # the shared initialisation and site mode's batch order only; the noise is secret
DELTA = 1e-5  # the default policy's δ (checked against the summary)
TIMING_ROUNDS = 5
CENTRAL_REPEATS = 3  # the noise is secret and unseeded: the spread of three runs is shown


# --------------------------------------------------------------------------- measuring
class Load:
    """The 1-minute load average, sampled every 2 s while a phase runs."""

    def __enter__(self) -> Load:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(2.0)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def text(self) -> str:
        return f"{statistics.mean(self.samples):.1f} (max {max(self.samples):.1f})"


@dataclasses.dataclass
class Federated:
    """One run_federated call as the benchmark saw it."""

    summary: FederatedSummary
    result: EngineResult
    spec: FederatedSpec
    steps: dict[str, float]  # seconds per step of run_federated
    callbacks: list[float]  # seconds from the rounds step's start to each round's callback
    shared: dict[str, float]  # per id domain: the largest shared patient's ε (ledger measure)
    shared_patients: dict[str, int]
    ledger_seconds: dict[str, list[float]]  # per SiteLedgers method: seconds of each call
    wall: float
    load: str


def _time_ledgers(ledgers: Any, into: dict[str, list[float]]) -> None:
    """Time every reserve and commit of the run's SiteLedgers (the real methods are called;
    only a timer is put around them), so a round's ledger work is told apart from training."""
    for method in ("reserve_round", "commit_round"):
        real = getattr(ledgers, method)

        def timed(*a: Any, _real: Any = real, _name: str = method, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                into.setdefault(_name, []).append(time.perf_counter() - start)

        setattr(ledgers, method, timed)


def federate(
    tag: str, sites: list[PreparedSite], *, mode: str, sigma: float, rounds: int
) -> Federated:
    """One federation with fresh SQLite ledgers of its own (``<home>/<tag>/<site>.db``)."""
    folder = HOME / tag
    folder.mkdir(parents=True)
    options = dict(mode=mode, rounds=rounds, local_steps=LOCAL_STEPS, batch_size=BATCH, lr=LR)
    options.update(noise_multiplier=sigma, min_sites=2, seed=SEED, model_name=f"bench-{tag}")
    listed = [
        dict(name=s.name, data=str(s.path), source=str(s.source), contract=str(s.contract))
        | {"ledger_url": f"sqlite:///{folder / s.name}.db"}
        for s in sites
    ]
    spec = parse_spec({**options, "sites": listed}, where=tag)
    steps: dict[str, float] = {}
    captured: dict[str, Any] = {}
    callbacks: list[float] = []
    ledger_seconds: dict[str, list[float]] = {}  # reserve_round / commit_round: each call's s

    def step(name: str, fn: Any, /, *args: Any, retry: bool = False, **kwargs: Any) -> Any:
        start = time.perf_counter()
        if name == "rounds":
            captured["rounds_start"] = start
            _time_ledgers(args[2], ledger_seconds)
        out = fn(*args, **kwargs)
        if name == "rounds":  # the ledgers are still open: read the shared patients' ε
            captured.update(result=out, shared=args[2].shared_spent())
            captured["shared_patients"] = args[2].shared_patients()
        steps[name] = time.perf_counter() - start
        return out

    def on_round(r: RoundRecord) -> None:
        callbacks.append(time.perf_counter() - captured["rounds_start"])
        print(f"  {tag} round {r.round}: {len(r.participants)} sites, {r.seconds:.2f} s")

    started = time.perf_counter()
    with Load() as load:
        summary = run_federated(spec, on_round=on_round, step=step)
    c, wall = captured, time.perf_counter() - started
    rest = (c["shared"], c["shared_patients"], ledger_seconds, wall, load.text())
    return Federated(summary, c["result"], spec, steps, callbacks, *rest)


# --------------------------------------------------------------------------- accounting
def filter_eps(mechanisms: list[Any]) -> float:
    """ε of the composition on the RDP filter (the ``adaptive`` ledger's enforced figure)."""
    total = np.zeros(len(FILTER_ORDERS))
    for m in mechanisms:  # RDP composes by adding the vectors, order by order
        total += np.asarray(accounting.rdp_vector(m, FILTER_ORDERS), dtype=float)
    return float(filter_epsilon(total.tolist(), DELTA, FILTER_ORDERS))


def bisect_sigma(build: Any, target: float) -> float:
    """Smallest σ (1 % relative) whose filter ε is at most ``target``; ε falls as σ grows."""
    lo, hi = 0.2, 64.0
    while hi / lo > 1.01:
        mid = (lo * hi) ** 0.5
        if filter_eps(build(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def site_epsilons(run: Federated) -> dict[str, dict[str, float]]:
    """Per site: the summary's ε, and its charges recomputed (filter, PLD, RDP)."""
    charges = charges_of(run.result.rounds)
    out = {}
    for row in run.summary.sites:
        mechs = [c.mechanism for c in charges.get(row["site"], [])]
        out[row["site"]] = {
            "summary": float(row["epsilon_spent"]),
            "filter": filter_eps(mechs),
            "pld": accounting.epsilon(mechs, delta=DELTA),
            "rdp": accounting.epsilon(mechs, delta=DELTA, accountant="rdp"),
            "q": float(getattr(mechs[0], "sample_rate", 1.0)),
        }
    return out


def flower_epsilon(sigma: float, sites: int, rounds: int) -> float:
    """Flower 1.42's RdpAccountant, configured and fed as its fixed-clipping strategy does."""
    from flwr.supercore import privacy_accounting as pa
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    relation, sampling = pa.NeighboringRelation.ADD_OR_REMOVE_ONE, pa.SamplingMethod
    config = pa.PrivacyConfig(DELTA, sites, relation, sampling.NO_AMPLIFICATION)
    acc = RdpAccountant(config)
    event = pa.GaussianPrivacyEvent(
        noise_multiplier=sigma, sample_size=sites, population_size=sites
    )
    for _ in range(rounds):
        acc.compose(event)
    return float(acc.get_epsilon(DELTA))


# --------------------------------------------------------------------------- utility
def pooled(datas: list[LocalData]) -> LocalData:
    """Every site's rows in one table (the centralised run's data); a patient held at two
    sites has one pseudonym in the shared domain, so they are one unit of privacy here."""

    def cat(parts: list[Arrays]) -> Arrays:
        cols = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "y", "block")}
        frame = pd.concat([p.sensitive for p in parts], ignore_index=True)
        ids = np.concatenate([p.patient_id for p in parts])
        return Arrays(**cols, patient_id=ids, sensitive=frame)

    train = cat([d.train for d in datas])
    return LocalData(
        train=train,
        test=cat([d.test for d in datas]),
        meta=datas[0].meta,
        version="pooled",
        n_features=datas[0].n_features,
        records_per_patient=records_per_patient(train.patient_id),
    )


def _gap(gaps: list[dict[str, Any]], attribute: str, metric: str) -> float | None:
    found = [g["gap"] for g in gaps if g["attribute"] == attribute and g["metric"] == metric]
    return float(found[0]) if found else None


def assess(
    run: Federated | None, datas: dict[str, LocalData], arrays: Any = None, spec: Any = None
) -> dict:
    """A model scored as the federation scores it: each site's test split at its training
    prevalence, then the site, sex and age band gaps over the pooled test rows."""
    if run is not None:
        arrays, spec = run.result.arrays, run.spec
    evals = [evaluate_site(name, arrays, d, spec) for name, d in datas.items()]
    scores = {name: site_scores(arrays, d, spec) for name, d in datas.items()}
    fair = federated_fairness(evals, scores)
    y = np.concatenate([scores[n][0] for n in datas])
    p = np.concatenate([scores[n][1] for n in datas])
    flagged = sum(int((scores[e.site][1] >= e.threshold).sum()) for e in evals)
    gaps = fair["gaps"] + fair["pooled"]["gaps"]
    return {
        "auroc": float(roc_auc_score(y, p)),
        "flagged": flagged / len(y),  # tests predicted positive (each site at its threshold)
        "sites": {e.site: e.auroc for e in evals},
        "gaps": {
            (a, m): _gap(gaps, a, m) for a in ("site", "sex", "age_band") for m in ("auroc", "fnr")
        },
    }


def central(
    initial: list[np.ndarray], data: LocalData, spec: FederatedSpec, sigma: float | None, datas: Any
) -> dict:
    """The pooled run, R · local steps at B · sites expected patients (σ None: plain SGD),
    assessed."""
    run_spec = dataclasses.replace(spec, noise_multiplier=sigma or 1.0)
    arrays = local.train_local(initial, data, run_spec, private=sigma is not None).arrays
    return assess(None, datas, arrays, spec)


def _mean_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if len(known) == len(values) else None


def mean_of(rows: list[dict]) -> dict:
    """Mean of repeated assessments, with the min-max of the overall AUROC."""
    keys = rows[0]["gaps"].keys()
    return {
        "auroc": statistics.mean(r["auroc"] for r in rows),
        "range": (min(r["auroc"] for r in rows), max(r["auroc"] for r in rows)),
        "flagged": statistics.mean(r["flagged"] for r in rows),
        "sites": {
            s: statistics.mean(float(r["sites"][s] or float("nan")) for r in rows)
            for s in rows[0]["sites"]
        },
        "gaps": {k: _mean_or_none([r["gaps"][k] for r in rows]) for k in keys},
    }


# --------------------------------------------------------------------------- timing
def timing(run: Federated) -> dict[str, Any]:
    """Round 1 (from the rounds step's start: Ray, node registration, the workers' imports
    and data loading, the first round) apart from the steady rounds."""
    rounds = [r.seconds for r in run.result.rounds if r.participants]
    reserve, commit = (run.ledger_seconds.get(m, []) for m in ("reserve_round", "commit_round"))
    first_cb = run.callbacks[0]
    return {
        "rounds": len(rounds),
        "open": run.steps["open-sites"],
        "startup": first_cb - rounds[0],
        "round1": rounds[0],
        "steady": rounds[1:],
        "after": run.steps["rounds"] - run.callbacks[-1],
        "track": run.steps["track-and-gate"],
        "total": run.wall,
        "load": run.load,
        "stopped": run.summary.stopped,
        "ledger": [r + c for r, c in zip(reserve, commit, strict=False)][1:],  # steady rounds
    }


# --------------------------------------------------------------------------- sections
def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or value != value else f"{value:.{digits}f}"


def degenerate_note(rows: list[tuple[str, str, dict]]) -> list[str]:
    """Why an FNR gap of 0 says nothing: the model flags (almost) no test or every test at
    the training-prevalence threshold, so every group's FNR is 1 (or 0)."""
    none = [label for label, _e, r in rows if r["flagged"] < 0.02]
    every = [label for label, _e, r in rows if r["flagged"] > 0.95]
    out = []
    if none:
        out.append(
            "- " + "; ".join(none) + ": under 2 % of tests flagged positive at the site's "
            "training-prevalence threshold (every score falls below it), so every group's FNR "
            "is about 1 and an FNR gap of about 0 says nothing (a gate's FNR check sees a model "
            "missing almost every positive); the AUROC gaps are the informative ones."
        )
    if every:
        out.append("- " + "; ".join(every) + ": over 95 % of tests flagged, every FNR near 0.")
    return out


def utility_section(ctx: dict[str, Any]) -> str:
    rec: Federated = ctx["record"]
    site: Federated = ctx["site"]
    eps = ctx["record_eps"]
    names = list(eps)
    lines = [
        HEADINGS[0],
        "",
        f"{stamp()} · {machine()} · load average {ctx['load']} · `benchmarks/bench_federated.py`"
        f" ({ctx['seconds']:.0f} s for the whole script)",
        "",
        f"covid_testing, 4 sites, full cohort ({ctx['patients']} training patients, "
        f"{ctx['records']} records; no `max_patients_per_site`). Record mode: {ROUNDS} rounds "
        f"× {LOCAL_STEPS} local patient-level DP-SGD steps, σ = {SIGMA:g}, C = 1, B = {BATCH} "
        f"expected patients, lr = {LR:g}, MLP (32 hidden), equal weights. Centralised: the "
        f"training rows pooled ({ctx['pooled_units']} patients: one held at two sites is "
        f"one), {ROUNDS * LOCAL_STEPS} steps at {BATCH * 4} expected patients (q = "
        f"{ctx['central_q']:.4f}), same initialisation, σ calibrated to the largest site ε. "
        "All scored alike: each site's test split at its training prevalence, gaps over the "
        f"pooled {ctx['test_rows']} test rows (≥ 30 rows, ≥ 10 positives a group). Noise is "
        f"secret: federated rows are one run, centralised the mean of {CENTRAL_REPEATS} [range].",
        "",
        "Per-patient ε of the record-level run, per site (δ = 1e-5):",
        "",
        "| site | training patients | q | ε in the summary (ledger: RDP filter) "
        "| same charges, PLD | same charges, RDP |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rec.summary.sites:
        e = eps[row["site"]]
        lines.append(
            f"| {row['site']} | {row['patients']} | {e['q']:.4f} | {e['summary']:.2f} "
            f"| {e['pld']:.2f} | {e['rdp']:.2f} |"
        )
    shared = next(iter(rec.shared.values()), None)
    sharedn = next(iter(rec.shared_patients.values()), 0)
    lines += [
        "",
        f"The {sharedn} patients held at two or more sites are charged at each, composed across "
        f"ledgers: the largest such ε is {_f(shared, 2)} (filter). The summary's figures equal "
        f"the charges recomputed apart: {'yes' if ctx['summary_matches'] else 'NO'} (1e-6).",
        "",
        "| model | per-patient ε (filter / PLD) | AUROC, all sites | "
        + " | ".join(f"AUROC {n}" for n in names)
        + " | AUROC gap: site | FNR gap: site | AUROC gap: sex | FNR gap: sex "
        "| AUROC gap: age band | FNR gap: age band | tests predicted positive |",
        "|---|---|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, epsl, res in ctx["rows"]:
        auroc = _f(res["auroc"])
        if "range" in res:
            auroc += f" [{res['range'][0]:.3f}–{res['range'][1]:.3f}]"
        gaps = res["gaps"]
        lines.append(
            f"| {label} | {epsl} | {auroc} | "
            + " | ".join(_f(res["sites"][n]) for n in names)
            + " | "
            + " | ".join(
                _f(gaps[(a, m)]) for a in ("site", "sex", "age_band") for m in ("auroc", "fnr")
            )
            + f" | {100 * res['flagged']:.0f} % |"
        )
    site_list = ", ".join(f"{r['epsilon_spent']:.2f}" for r in site.summary.sites)
    fed, cen = ctx["rows"][0][2], ctx["rows"][1][2]
    sigma_site = site.spec.noise_multiplier
    noise = sigma_site / len(site.spec.sites)
    stop = f" ({site.summary.stopped})" if site.summary.stopped else ""
    lines += [
        "",
        f"- Record level against centralised (matched on the filter): AUROC {fed['auroc']:.3f} "
        f"against {cen['auroc']:.3f} [{cen['range'][0]:.3f}–{cen['range'][1]:.3f}]; the "
        "federated figure is one run. Four earlier runs of this script while it was written: "
        "federated 0.617, 0.638, 0.627, 0.621; centralised means 0.614, 0.618, 0.615, 0.611. "
        "The federation's large sites run at a smaller q and spend less than the matched ε.",
        *degenerate_note(ctx["rows"]),
        f"- Site level: σ = {sigma_site:.2f} on the sum of the clipped site updates (no site "
        f"sampling), set so that a patient at {ctx['most_sites']} sites (charged at each) "
        f"reaches the record run's largest shared ε, {_f(shared, 2)}; ledgers: {site_list} per "
        f"site, {_f(next(iter(site.shared.values()), None), 2)} shared; {site.summary.rounds} of "
        f"{site.summary.rounds_planned} rounds ran{stop}. The server's noise on the average is "
        f"{noise:.2f} per coordinate a round over {ctx['parameters']} parameters (norm about "
        f"{noise * ctx['parameters'] ** 0.5:.0f}) against updates of norm ≤ 1: four sites "
        "are far too few for DP-FedAvg at this ε.",
        "",
    ]
    return "\n".join(lines)


def accounting_section(ctx: dict[str, Any]) -> str:
    site: Federated = ctx["site"]
    eps = ctx["site_eps"]
    sigma = site.spec.noise_multiplier
    n = len(site.spec.sites)
    flower = flower_epsilon(sigma, n, site.summary.rounds)
    mech = accounting.site_round_mechanism(noise_multiplier=sigma, site_sample_rate=1.0, rounds=1)
    lines = [
        HEADINGS[1],
        "",
        f"{stamp()} · {machine()} · `benchmarks/bench_federated.py`",
        "",
        f"The site-level run of the table above: {n} sites, {site.summary.rounds} rounds, "
        f"σ = {sigma:.2f}, C = 1, no site sampling, δ = {DELTA:g}. dpgov's figures are read "
        "from the run's ledgers (the summary) and recomputed from the round charges "
        f"(`{type(mech).__name__}`, replace-one: removing a patient replaces their site's "
        "clipped update, sensitivity 2C); Flower's `RdpAccountant` "
        "(`PrivacyConfig(NO_AMPLIFICATION, ADD_OR_REMOVE_ONE)`) is fed one "
        f"`GaussianPrivacyEvent(σ, {n}, {n})` per round, as its fixed-clipping strategy "
        "does (a whole client added or removed, sensitivity C).",
        "",
        "| site | dpgov ε, summary (RDP filter) | dpgov, PLD | dpgov, RDP "
        "| Flower RdpAccountant, client add/remove |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, e in eps.items():
        lines.append(
            f"| {name} | {e['summary']:.2f} | {e['pld']:.2f} | {e['rdp']:.2f} | {flower:.2f} |"
        )
    shared = next(iter(site.shared.values()), None)
    lines += [
        "",
        f"- Flower's figure is smaller because it protects a *client* added or removed "
        f"(sensitivity C: the Gaussian of σ = {sigma:.2f}); dpgov's protects a *patient* "
        f"(removing them replaces their site's clipped update anywhere in the ball, "
        f"sensitivity 2C: the Gaussian of σ/2 = {sigma / 2:.2f}). Flower's is not a "
        "per-patient guarantee, nor does it see a patient held at two sites, charged at both "
        f"and composed across the ledgers ({_f(shared, 2)} on the filter here).",
        "- The summary's figure is the RDP filter an `adaptive` ledger (the default policy) "
        "enforces; the PLD is what a `fixed` schedule would be charged.",
        "",
    ]
    return "\n".join(lines)


def ledger_note(timings: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """How much of a steady round is the ledgers' work rather than Flower and training."""
    parts = [
        f"{label.split(' ', 1)[0]} sites{' (site level)' if 'site-level' in label else ''}: "
        f"{100 * statistics.mean(t['ledger']) / statistics.mean(t['steady']):.0f} %"
        for label, t in timings
        if t["ledger"] and t["steady"]
    ]
    if not parts:
        return []
    return [
        "- Share of a steady round in the ledgers' reserve and commit: " + ", ".join(parts) + "; "
        "the rest is Flower's messages, local steps, aggregation. At 10 sites every patient is "
        "shared by two sites, the worst case for the cross-ledger composition."
    ]


def timing_section(ctx: dict[str, Any]) -> str:
    lines = [
        HEADINGS[2],
        "",
        f"{stamp()} · {machine()} · `benchmarks/bench_federated.py`",
        "",
        f"{LOCAL_STEPS} local steps per round at B = {BATCH} (record: DP-SGD at each site; "
        "site level: plain SGD, the server clips and noises), Flower's simulation engine (Ray, "
        "one CPU per site actor, at most one actor per core). `start-up`: from the rounds "
        "step's start to round 1's (Ray, SuperNodes registering); round 1 also pays each "
        "worker's torch/Opacus imports and data load; `ledgers`: a steady round's reserve and "
        "commit at every site (shared patients composed across ledgers); `after`: the final "
        "evaluation at every site and Ray's shutdown; `track & gate`: MLflow logging, "
        "registration, every site's gate. 10 sites: flchain cut into 5 sites by its keyed "
        "hash, prepared twice with one key, so every patient is at two sites (the ledgers "
        "detect and compose them each round): a timing run, not 10 distinct cohorts.",
        "",
        "| sites | rounds | open sites (s) | start-up (s) | round 1 (s) | steady round, mean "
        "(min–max) (s) | of which ledgers, mean (s) | after (s) "
        "| track & gate (s) | total (s) | load average (max) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for label, t in ctx["timings"]:
        steady = t["steady"]
        lines.append(
            f"| {label} | {t['rounds']} | {t['open']:.1f} | {t['startup']:.1f} "
            f"| {t['round1']:.1f} | {statistics.mean(steady):.2f} ({min(steady):.2f}–"
            f"{max(steady):.2f}) | {_f(statistics.mean(t['ledger']) if t['ledger'] else None, 2)} "
            f"| {t['after']:.1f} | {t['track']:.1f} | {t['total']:.1f} "
            f"| {t['load']} |"
        )
    stops = [f"{label}: {t['stopped']}" for label, t in ctx["timings"] if t["stopped"]]
    lines += [
        "",
        "- Every run in this table ran all its rounds."
        if not stops
        else "- Runs that stopped early: " + "; ".join(stops),
        *ledger_note(ctx["timings"]),
        "- The 4-site record run came first: it pays Great Expectations' import (open sites) "
        "and MLflow's first use (track & gate). Other work shared the machine (load column); "
        f"at most {os.cpu_count()} sites train at once on {os.cpu_count()} cores.",
        "",
    ]
    return "\n".join(lines)


def write(sections: list[str]) -> None:
    """Replace this script's sections of RESULTS_federated.md (or add them), keeping every
    other one (the accounting section of bench_fed_accounting.py)."""
    text = OUT.read_text() if OUT.exists() else "# Federated learning across sites (issue 20)\n\n"
    for heading, body in zip(HEADINGS, sections, strict=True):
        pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
        found = pattern.search(text)
        if found:
            text = text[: found.start()] + body + "\n" + text[found.end() :]
        else:
            text = text.rstrip() + "\n\n" + body
    OUT.write_text(text.rstrip() + "\n")


# --------------------------------------------------------------------------- main
def main() -> None:
    start = time.perf_counter()
    ctx: dict[str, Any] = {}
    with Load() as load:
        covid4 = prepare_sites(HOME / "covid4", source="covid_testing", sites=4)
        rec = federate("record4", covid4, mode="record", sigma=SIGMA, rounds=ROUNDS)
        eps = site_epsilons(rec)
        assert all(abs(r["delta"] - DELTA) < 1e-15 for r in rec.summary.sites), "policy δ"
        ctx["summary_matches"] = all(abs(e["summary"] - e["filter"]) < 1e-6 for e in eps.values())
        worst = max(eps, key=lambda n: eps[n]["summary"])
        target_filter, target_pld = eps[worst]["summary"], eps[worst]["pld"]

        datas = {s.name: local.load_site_data(s.path) for s in covid4}
        pool = pooled(list(datas.values()))
        cspec = dataclasses.replace(
            rec.spec, local_steps=ROUNDS * LOCAL_STEPS, batch_size=BATCH * len(covid4)
        )
        q = min(1.0, cspec.batch_size / pool.units)
        initial = local.get_arrays(local.build_site_model(rec.spec, datas[covid4[0].name]))
        steps = cspec.local_steps

        def dpsgd(s: float) -> list[Any]:
            return [accounting.DpSgdMechanism(noise_multiplier=s, sample_rate=q, steps=steps)]

        sigma_filter = bisect_sigma(dpsgd, target_filter)
        sigma_pld = accounting.calibrate_noise_multiplier(
            target_epsilon=target_pld, delta=DELTA, sample_rate=q, steps=steps
        )
        per_site = [f"{e['summary']:.2f}" for e in eps.values()]
        per_site_pld = [f"{e['pld']:.2f}" for e in eps.values()]
        fed_eps = f"per site {', '.join(per_site)} / {', '.join(per_site_pld)}"
        rows = [(f"federated, record level (σ = {SIGMA:g})", fed_eps, assess(rec, datas))]
        for label, sigma in (("filter", sigma_filter), ("PLD", sigma_pld)):
            runs = [central(initial, pool, cspec, sigma, datas) for _ in range(CENTRAL_REPEATS)]
            f_eps, p_eps = filter_eps(dpsgd(sigma)), accounting.epsilon(dpsgd(sigma), delta=DELTA)
            name = f"centralised DP-SGD, ε matched on the {label} (σ = {sigma:.2f})"
            rows.append((name, f"{f_eps:.2f} / {p_eps:.2f}", mean_of(runs)))
        plain = [central(initial, pool, cspec, None, datas) for _ in range(2)]
        rows.append(("centralised, no DP (plain SGD, same steps)", "∞", mean_of(plain)))

        held = Counter(p for d in datas.values() for p in set(d.train.patient_id.tolist()))
        most = max(held.values())  # a patient at k sites is charged k site-level Gaussians
        fedavg = accounting.site_round_mechanism
        sigma_site = bisect_sigma(
            lambda s: [fedavg(noise_multiplier=s, site_sample_rate=1.0, rounds=ROUNDS)] * most,
            max(rec.shared.values()),
        )
        site = federate("site4", covid4, mode="site", sigma=sigma_site, rounds=ROUNDS)
        site_eps = site_epsilons(site)
        first = site_eps[covid4[0].name]
        every = f"{first['summary']:.2f} / {first['pld']:.2f} every site"
        rows.append((f"federated, site level (σ = {sigma_site:.2f})", every, assess(site, datas)))

        covid3 = prepare_sites(HOME / "covid3", source="covid_testing", sites=3)
        t3 = federate("timing3", covid3, mode="record", sigma=SIGMA, rounds=TIMING_ROUNDS)
        fl_a = prepare_sites(HOME / "flchain-a", source="flchain", sites=5)
        fl_b = prepare_sites(HOME / "flchain-b", source="flchain", sites=5)
        assert [s.patients for s in fl_a] == [s.patients for s in fl_b], "one key, one split"
        pairs = (("a", fl_a), ("b", fl_b))  # the same sites in two folders: two ledgers each
        ten = [dataclasses.replace(s, name=f"{ab}-{s.name}") for ab, fl in pairs for s in fl]
        t10 = federate("timing10", ten, mode="record", sigma=SIGMA, rounds=TIMING_ROUNDS)

    ctx.update(record=rec, site=site, record_eps=eps, site_eps=site_eps, rows=rows)
    ctx.update(load=load.text(), pooled_units=pool.units, central_q=q, most_sites=most)
    ctx["patients"] = sum(len(np.unique(d.train.patient_id)) for d in datas.values())
    ctx["records"] = sum(len(d.train.y) for d in datas.values())
    ctx["test_rows"] = sum(len(d.test.y) for d in datas.values())
    ctx["parameters"] = sum(int(a.size) for a in initial)
    ctx["timings"] = [
        ("3 (covid_testing)", timing(t3)),
        ("4 (covid_testing, the record run above)", timing(rec)),
        ("4 (covid_testing, the site-level run above)", timing(site)),
        ("10 (flchain 5 sites, twice)", timing(t10)),
    ]
    ctx["seconds"] = time.perf_counter() - start
    sections = [utility_section(ctx), accounting_section(ctx), timing_section(ctx)]
    for text in sections:
        print(text)
    write(sections)


if __name__ == "__main__":
    main()
