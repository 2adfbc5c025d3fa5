"""Your own imaging model on this CPU: ResNet-18 (GroupNorm) at 64×64, DP-SGD against SGD.

The model is MONAI's ``resnet18`` (2-D, 1 channel, one logit) built through ``model.factory``
exactly as a governed run builds it (BatchNorm → GroupNorm, in-place activations off, Opacus's
validators and one hooked backward pass). torchvision's ResNet-18 is the same architecture,
but PyPI's torchvision wheel does not load with the CPU torch here (docs/models.md).

Variants, each in its own child process so its peak resident memory is its own, alternating
over ``--repeats`` rounds: ``nonprivate`` (plain SGD, shuffled batches), ``dp`` (Opacus hooks,
fp32), ``dp-amp`` (Opacus hooks, bfloat16 autocast, norms/clip/noise in fp32). Time per epoch
is the median of the epochs after the first (warm-up); ratios are against ``nonprivate`` of
the same invocation. Images are generated in memory (reading from disk is
bench_imaging_io.py's subject).

    .venv/bin/python benchmarks/bench_imaging.py [--quick] [--repeats N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, stamp

FACTORY = "monai.networks.nets:resnet18"
KWARGS = {"spatial_dims": 2, "n_input_channels": 1, "num_classes": 1}
RESULTS = Path(__file__).resolve().parent / "RESULTS_imaging.md"


def build(side: int, batchnorm: str = "groupnorm") -> Any:
    from dpgov.training.models import InputSpec, build_model
    from dpgov.training.params import parse_params

    cfg = parse_params({"model": {"factory": FACTORY, "kwargs": KWARGS, "batchnorm": batchnorm}})
    spec = InputSpec(kind="image", n_features=side * side, image_shape=(1, side, side))
    return build_model(cfg.model, spec, allowed_factories=["monai.networks.nets:*"])


def images(n: int, side: int, seed: int = 0) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, side, side)).astype(np.float32)
    y = (x[:, :, : side // 2].mean(axis=(1, 2, 3)) > 0).astype(np.float32)
    return x, y


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import resource
    import warnings

    import torch

    from dpgov.training import trainer
    from dpgov.training.params import TrainParams

    warnings.filterwarnings("ignore")
    side, n, batch, epochs = spec["side"], spec["n"], spec["batch"], spec["epochs"]
    x, y = images(n, side)
    model = build(side)
    device = trainer.resolve_device(spec["device"])
    cfg = TrainParams(
        epochs=epochs,
        batch_size=batch,
        max_physical_batch_size=batch * 2,
        learning_rate=0.05,
        precision="amp" if spec["variant"] == "dp-amp" else "fp32",
        device=spec["device"],
    )
    if spec["variant"] == "nonprivate":
        result = trainer.train_nonprivate(
            model, x, y, batch_size=batch, epochs=epochs, cfg=cfg, device=device
        )
    else:
        plan = trainer.sampling_plan(n=n, batch_size=batch, epochs=epochs)
        result = trainer.train_private(
            model,
            x,
            y,
            plan=plan,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            cfg=cfg,
            device=device,
            grad_sample_mode="hooks",
        )
    per_epoch = statistics.median(result.epoch_seconds[1:] or result.epoch_seconds)
    return {
        "seconds_per_epoch": per_epoch,
        "images_per_second": n / per_epoch,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_cuda_bytes": result.peak_memory_bytes,
        "threads": torch.get_num_threads(),
    }


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(*, quick: bool, repeats: int, device: str) -> dict[str, Any]:
    case = {
        "side": 64,
        "n": 48 if quick else 96,
        "batch": 16,
        "epochs": 2,
        "device": device,
    }
    variants = ["nonprivate", "dp", "dp-amp"]
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    for _ in range(repeats):
        for v in variants:
            results[v].append(_run_child({**case, "variant": v}))
    base_t = min(r["seconds_per_epoch"] for r in results["nonprivate"])
    base_m = min(r["peak_rss_bytes"] for r in results["nonprivate"])
    rows = []
    for v, runs in results.items():
        t = min(r["seconds_per_epoch"] for r in runs)
        m = min(r["peak_rss_bytes"] for r in runs)
        rows.append(
            {
                "variant": v,
                "seconds_per_epoch": t,
                "seconds_per_epoch_all": [r["seconds_per_epoch"] for r in runs],
                "images_per_second": case["n"] / t,
                "time_ratio": t / base_t,
                "peak_rss_mib": m / 2**20,
                "memory_ratio": m / base_m,
                "threads": runs[0]["threads"],
            }
        )
    return {
        "case": case,
        "rows": rows,
        "repeats": repeats,
        "seconds": time.perf_counter() - started,
        "load": [load_start, os.getloadavg()[0]],
        "cores": os.cpu_count(),
        "machine": machine(),
        "when": stamp(),
    }


def markdown(out: dict[str, Any]) -> str:
    c = out["case"]
    lines = [
        "# Your own imaging model: ResNet-18 (GroupNorm) at 64×64, DP-SGD against SGD",
        "",
        f"Machine: {out['machine']}; {out['when']}; `benchmarks/bench_imaging.py` "
        f"({out['repeats']} round(s), {out['seconds']:.0f} s in all).",
        "",
        f"MONAI `resnet18` (2-D, 1 channel, one logit; 11.2 M parameters) built through "
        f"`model.factory` (20 BatchNorm → GroupNorm), {c['n']} generated 1×64×64 images, "
        f"expected batch {c['batch']}, {c['epochs']} epochs (the first is warm-up), on "
        f"{c['device']}. Each variant in its own process; the best of the rounds; ratios "
        "against `nonprivate` of this run. Peak memory is the process's peak resident set "
        "(torch, Opacus and MONAI loaded included).",
        "",
        "| variant | s / epoch | images / s | time ratio | peak RSS MiB | memory ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['variant']} | {r['seconds_per_epoch']:.2f} | {r['images_per_second']:.1f} "
            f"| {r['time_ratio']:.2f} | {r['peak_rss_mib']:.0f} | {r['memory_ratio']:.2f} |"
        )
    lines += [
        "",
        "`dp`: Opacus per-sample gradients (hooks), fp32. `dp-amp`: the same under bfloat16 "
        "autocast with per-sample norms, clipping and noise in fp32 (`train.precision: amp`); "
        "whether bfloat16 pays on a CPU depends on its bfloat16 support; amp is meant for "
        "GPUs (benchmarks/gpu_check.py, prepared for a lent GPU).",
        f"Load average (1 min) at start and end: {out['load'][0]:.1f}, {out['load'][1]:.1f} "
        f"on {out['cores']} cores: other jobs shared the CPU, so single figures are noisy; "
        "the best of the rounds is shown.",
        "All epoch times (s): "
        + "; ".join(
            f"{r['variant']} " + ", ".join(f"{t:.2f}" for t in r["seconds_per_epoch_all"])
            for r in out["rows"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    out = run(quick=args.quick, repeats=args.repeats, device=args.device)
    text = markdown(out)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
