"""What the governed pipeline costs beyond training: ``dpgov demo`` split into orchestration,
validation, training, tracking and gate, beside a bare Opacus script training the same model
on the same data with the same mechanism, in the same invocation.

- ``dpgov demo --json`` runs as a child process in a fresh ``$DPGOV_HOME`` (cold: Prefect's
  temporary server creates its database) and then again in the same home (warm). Its JSON
  carries the seconds of each step (measured inside the tasks), the training loops' own
  seconds, and when the Prefect API was ready.
- The same pipeline without Prefect (``--direct``, a child process in a fresh home: prepare,
  then ``run_governed``, which validates, trains, tracks and gates): what orchestration adds
  is the demo minus this.
- The bare script (``--bare``, also a child process) imports torch and Opacus, reads the
  prepared Parquet, builds the same MLP and runs DP-SGD with the demo's σ, q and T (Poisson
  sampling, ghost clipping, the same physical batches): no ledger, no validation, no MLflow,
  no reference model, no evaluation.

Categories (seconds of the demo's wall time):
  imports        torch, Opacus, MLflow, Great Expectations, loaded while the Prefect API
                 starts (the steps would otherwise pay them)
  orchestration  wall − imports − the steps below (Python start-up, waiting for the Prefect
                 API, flow and task overhead)
  validation     prepare + dvc (add, push) + validate + load_data
  training       plan (σ calibration) + reserve + train + commit + evaluate (scores, the
                 non-private reference and bootstrap intervals); of which "DP loop" and
                 "reference loop" are the epochs themselves
  tracking       track (MLflow runs, model logging, registry)
  gate           gate + block budgets + artifacts

    .venv/bin/python benchmarks/bench_pipeline.py [--repeats N] [--json out.json]

Writes benchmarks/RESULTS_pipeline.md (gathered into RESULTS.md by benchmarks/collect.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET_S = 25.0  # everything but the training loop
BIN = Path(sys.executable).parent
ENV = {
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
VALIDATION = ("prepare", "dvc", "validate", "load_data")
TRAINING = ("plan", "reserve", "train", "commit", "evaluate")
TRACKING = ("track",)
GATE = ("gate", "budgets", "artifacts")


# --------------------------------------------------------------------------- the bare script


def bare(spec: dict[str, Any]) -> dict[str, Any]:
    """DP-SGD with Opacus alone: the same MLP, data, σ, q, T, clipping and optimizer."""
    started = time.perf_counter()
    import warnings

    import pandas as pd
    import torch
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore")
    imported = time.perf_counter()
    folder = Path(spec["data"])
    meta = json.loads((folder / "meta.json").read_text())
    train = pd.read_parquet(folder / "train.parquet")
    x = torch.tensor(train[meta["features"]].to_numpy(dtype="float32"))
    y = torch.tensor(train["label"].to_numpy(dtype="float32"))
    torch.manual_seed(0)
    widths = [x.shape[1], 64, 32]
    layers: list[nn.Module] = []
    for a, b in pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 1), nn.Flatten(start_dim=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=spec["learning_rate"])
    loader = DataLoader(TensorDataset(x, y), batch_size=spec["batch_size"])
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, criterion, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=nn.BCEWithLogitsLoss(),
        data_loader=loader,
        noise_multiplier=spec["noise_multiplier"],
        max_grad_norm=spec["max_grad_norm"],
        poisson_sampling=True,
        grad_sample_mode="ghost",
    )
    assert abs(loader.sample_rate - spec["sample_rate"]) < 1e-12, loader.sample_rate
    ready = time.perf_counter()
    steps = 0
    for _ in range(spec["epochs"]):
        with BatchMemoryManager(
            data_loader=loader, max_physical_batch_size=1024, optimizer=optimizer
        ) as batches:
            for xb, yb in batches:
                optimizer.zero_grad()
                criterion(model(xb), yb).backward()
                optimizer.step()
        steps = sum(t for _, _, t in engine.accountant.history)
    done = time.perf_counter()
    return {
        "imports": imported - started,
        "setup": ready - imported,
        "loop": done - ready,
        "steps": steps,
        "in_process": done - started,
    }


def direct(spec: dict[str, Any]) -> dict[str, Any]:
    """The same pipeline as ``dpgov demo`` without Prefect: prepare, then the governed run
    (``run_governed``: validate, plan, reserve, train, commit, evaluate, track, budgets, gate).
    Run in a fresh home: its cost beside the demo's."""
    started = time.perf_counter()
    import warnings

    warnings.filterwarnings("ignore")
    from dpgov.data import prepare
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.training.governed import RunOptions, run_governed
    from dpgov.training.params import data_params, embedded_params_path, load_params

    home = Path(spec["home"])
    out = home / "demo" / "prepared" / "flchain"
    base = load_params(embedded_params_path())
    params = base.model_copy(update={"train": base.train.model_copy(update={"data": str(out)})})
    prepare(None, None, out=out, params=data_params(params))
    options = RunOptions(validation_out=str(home / "demo" / "validation" / "flchain"))
    ledger = Ledger.open()
    try:
        run_governed(params, load_policy(spec["policy"]), ledger=ledger, options=options)
    finally:
        ledger.close()
    return {"in_process": time.perf_counter() - started}


# --------------------------------------------------------------------------- the demo


def run_demo(home: Path) -> dict[str, Any]:
    env = {**os.environ, **ENV, "DPGOV_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    t = time.perf_counter()
    out = subprocess.run(
        [str(BIN / "dpgov"), "demo", "--json"],
        env=env,
        cwd=home.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"dpgov demo failed ({out.returncode}): {out.stderr[-2000:]}")
    data = json.loads(out.stdout)
    t_steps = data["timings"]
    sum_of = lambda keys: sum(float(t_steps.get(k, 0.0)) for k in keys)  # noqa: E731
    split = {
        "validation": sum_of(VALIDATION),
        "training": sum_of(TRAINING),
        "tracking": sum_of(TRACKING),
        "gate": sum_of(GATE),
    }
    split["imports"] = float(data["orchestration"]["preload_seconds"])
    split["orchestration"] = wall - sum(split.values())
    return {
        "wall": wall,
        "split": split,
        "steps": t_steps,
        "dp_loop": data["training_loop_seconds"],
        "reference_loop": data["reference_loop_seconds"],
        "orchestration": data["orchestration"],
        "plan": data["plan"],
        "validation_reused": data["validation"]["reused"],
    }


def run_child(flag: str, spec: dict[str, Any], **env: str) -> dict[str, Any]:
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), flag, json.dumps(spec)],
        env={**os.environ, **ENV, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{flag} child failed: {out.stderr[-2000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall": wall}


def _median(rows: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in rows:
        v: Any = r
        for p in path:
            v = v[p]
        values.append(float(v))
    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="cold+warm demo rounds")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    ap.add_argument("--direct", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        print(json.dumps(bare(json.loads(args.bare))))
        return
    if args.direct:
        print(json.dumps(direct(json.loads(args.direct))))
        return

    sys.path.insert(0, str(HERE))
    from _machine import machine, stamp

    import dpgov

    policy = Path(dpgov.__file__).resolve().parent / "defaults" / "policy.yaml"
    cold, warm, bares, directs = [], [], [], []
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            home = Path(tmp) / "home"
            cold.append(run_demo(home))
            warm.append(run_demo(home))
            plan = cold[-1]["plan"]
            spec = {
                "data": str(home / "demo" / "prepared" / "flchain"),
                "noise_multiplier": plan["noise_multiplier"],
                "sample_rate": plan["sample_rate"],
                "epochs": plan["epochs"],
                "batch_size": 512,
                "learning_rate": 0.2,
                "max_grad_norm": plan["max_grad_norm"],
            }
            bares.append(run_child("--bare", spec))
        with tempfile.TemporaryDirectory(prefix="bench-direct-") as tmp:
            home = Path(tmp) / "home"
            home.mkdir()
            directs.append(
                run_child(
                    "--direct",
                    {"home": str(home), "policy": str(policy)},
                    DPGOV_HOME=str(home),
                    MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
                )
            )

    def block(name: str, rows: list[dict[str, Any]]) -> list[str]:
        wall = _median(rows, "wall")
        loop = _median(rows, "dp_loop")
        ref = _median(rows, "reference_loop")
        lines = [
            f"| {name} | {wall:.1f} | {_median(rows, 'split', 'orchestration'):.1f} "
            f"| {_median(rows, 'split', 'imports'):.1f} "
            f"| {_median(rows, 'split', 'validation'):.1f} "
            f"| {_median(rows, 'split', 'training'):.1f} ({loop:.1f} + {ref:.1f}) "
            f"| {_median(rows, 'split', 'tracking'):.1f} | {_median(rows, 'split', 'gate'):.1f} "
            f"| {wall - loop:.1f} | {wall - loop - ref:.1f} |"
        ]
        return lines

    load_after = os.getloadavg()
    lines = [
        "# Pipeline benchmark: what `dpgov demo` costs beyond training",
        "",
        f"date: {stamp()}; machine: {machine()}; load average (1, 5 min) at the start "
        f"{load_before[0]:.1f}, {load_before[1]:.1f}, at the end {load_after[0]:.1f}, "
        f"{load_after[1]:.1f}",
        "",
        f"command: `.venv/bin/python benchmarks/bench_pipeline.py --repeats {args.repeats}`",
        "",
        "Each round: `dpgov demo --json` as a child process in a fresh `$DPGOV_HOME` (cold: "
        "Prefect's temporary server creates its database), again in the same home (warm), a "
        "bare Opacus script training the same MLP on the same prepared data with the demo's "
        "σ, q, T (Poisson sampling, ghost clipping; no ledger, validation, MLflow, reference "
        "or evaluation), and the same pipeline without Prefect (one process, fresh home). "
        "Step seconds are measured inside the Prefect tasks; the categories are described at "
        "the top of the script.",
        "",
        f"## Medians of {args.repeats} round(s)",
        "",
        "| run | wall s | orchestration | imports | validation "
        "| training (DP loop + reference loop) | tracking | gate | wall − DP loop "
        "| wall − both loops |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *block("`dpgov demo`, cold (fresh $DPGOV_HOME)", cold),
        *block("`dpgov demo`, warm (same home again)", warm),
        f"| bare Opacus script | {_median(bares, 'wall'):.1f} | — "
        f"| {_median(bares, 'imports'):.1f} | — "
        f"| {_median(bares, 'loop'):.1f} (loop) | — | — "
        f"| {_median(bares, 'wall') - _median(bares, 'loop'):.1f} | — |",
        "",
        "Prefect API ready after (s): cold "
        + ", ".join(f"{r['orchestration']['api_seconds']:.1f}" for r in cold)
        + "; warm "
        + ", ".join(f"{r['orchestration']['api_seconds']:.1f}" for r in warm)
        + "; waited for it (s): cold "
        + ", ".join(f"{r['orchestration']['api_waited']:.1f}" for r in cold)
        + "; warm "
        + ", ".join(f"{r['orchestration']['api_waited']:.1f}" for r in warm),
        "steps (s, cold, median): "
        + ", ".join(
            f"{k} {statistics.median(float(r['steps'].get(k, 0.0)) for r in cold):.2f}"
            for k in cold[0]["steps"]
        ),
        f"the same pipeline without Prefect (prepare, run_governed: validate … gate; fresh "
        f"home, one process): {_median(directs, 'wall'):.1f} s wall",
        "bare script (s, median): imports "
        f"{_median(bares, 'imports'):.1f}, setup {_median(bares, 'setup'):.1f}, loop "
        f"{_median(bares, 'loop'):.1f} for {bares[0]['steps']} steps",
    ]
    lines += [
        "",
        "## Per round",
        "",
        "| round | demo cold wall | DP loop | cold wall − DP loop | demo warm wall | DP loop "
        "| warm wall − DP loop | without Prefect | bare script wall (loop) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (c, w, b, d) in enumerate(zip(cold, warm, bares, directs, strict=True), 1):
        lines.append(
            f"| {i} | {c['wall']:.1f} | {c['dp_loop']:.1f} | {c['wall'] - c['dp_loop']:.1f} "
            f"| {w['wall']:.1f} | {w['dp_loop']:.1f} | {w['wall'] - w['dp_loop']:.1f} "
            f"| {d['wall']:.1f} | {b['wall']:.1f} ({b['loop']:.1f}) |"
        )
    over = {
        name: _median(rows, "wall") - _median(rows, "dp_loop")
        for name, rows in (("cold", cold), ("warm", warm))
    }
    met = all(v <= TARGET_S for v in over.values())
    per_cold = ", ".join(f"{c['wall'] - c['dp_loop']:.1f}" for c in cold)
    per_warm = ", ".join(f"{w['wall'] - w['dp_loop']:.1f}" for w in warm)
    lines += [
        "",
        f"## Against the target (everything but the training loop ≤ {TARGET_S:g} s)",
        "",
        ("Met" if met else "Not met")
        + f": median wall − DP loop {over['cold']:.1f} s cold, {over['warm']:.1f} s warm "
        f"(per round: cold {per_cold}; warm {per_warm}). Wall times "
        "follow the machine's load: compare rounds of one run, not runs on different days.",
    ]
    text = "\n".join(lines)
    print(text)
    (HERE / "RESULTS_pipeline.md").write_text(text + "\n")
    if args.json:
        args.json.write_text(
            json.dumps({"cold": cold, "warm": warm, "bare": bares, "direct": directs}, indent=2)
        )


if __name__ == "__main__":
    main()
