"""The GPU checks of issue 19, prepared for a lent GPU machine (under 8 minutes in all).

1. **DP step on CUDA**: a ResNet-18 built through ``model.factory`` (BatchNorm → GroupNorm)
   takes DP-SGD steps with ``train_private`` on ``cuda``; Opacus's history equals the plan and
   the noise generator lives on the GPU.
2. **amp norm test on CUDA**: under bfloat16 autocast with ``train.precision: amp``'s fp32
   cast, every clipped per-sample gradient has norm ≤ C (1 + 1e-5); the uncast bfloat16 path
   is measured beside it.
3. **224×224 samples per second**: ResNet-18 (GroupNorm, 3 channels, one logit) on generated
   images: non-private SGD, DP-SGD fp32, DP-SGD amp (Opacus hooks), time per epoch after a
   warm-up epoch, peak CUDA memory, ratios against non-private in the same run.
4. **DPDDP over 2 GPUs** (``train.world_size``, nccl; skipped with fewer GPUs): the update's
   noise std is σC once, not √2 times; shards disjoint; history the plan's.

The ResNet-18 is defined here (torchvision's layout, BatchNorm included) so that nothing but
torch, Opacus and dpgov is needed on the machine; it goes through the same factory path a
governed run uses (allow-list, BatchNorm fix, validators, one hooked backward).

    python benchmarks/gpu_check.py [--quick] [--out DIR]      (DIR default: $OUT, else benchmarks/)

Writes ``gpu_check.json`` and ``RESULTS_gpu.md`` to DIR. Exit 1 if a check fails, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from _machine import machine, stamp  # noqa: E402

FACTORY = "gpu_check:resnet18"
BUDGET_S = 450  # stop everything well inside 8 minutes


def resnet18(in_channels: int = 3, num_classes: int = 1000) -> Any:
    """torchvision's ResNet-18 layout (BasicBlock ×[2, 2, 2, 2], BatchNorm, in-place ReLU)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += identity
            return self.relu(out)

    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def build(side: int, channels: int = 3) -> Any:
    from dpgov.training.models import InputSpec, build_model
    from dpgov.training.params import parse_params

    cfg = parse_params(
        {"model": {"factory": FACTORY, "kwargs": {"in_channels": channels, "num_classes": 1}}}
    ).model
    spec = InputSpec(
        kind="image", n_features=channels * side * side, image_shape=(channels, side, side)
    )
    return build_model(cfg, spec, allowed_factories=[FACTORY])


def _images(n: int, side: int, channels: int = 3) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, channels, side, side)).astype(np.float32)
    y = (x[:, :, : side // 2].mean(axis=(1, 2, 3)) > 0).astype(np.float32)
    return x, y


def dp_step_on_cuda() -> dict[str, Any]:
    import torch

    from dpgov.training import trainer
    from dpgov.training.params import TrainParams

    x, y = _images(64, 32)
    plan = trainer.sampling_plan(n=64, batch_size=16, epochs=1)
    result = trainer.train_private(
        build(32),
        x,
        y,
        plan=plan,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        cfg=TrainParams(device="cuda"),
        device=torch.device("cuda"),
        grad_sample_mode="hooks",
    )
    ok = result.history == [(1.0, plan.sample_rate, plan.steps)] and result.device.startswith(
        "cuda"
    )
    return {
        "ok": ok,
        "steps": result.steps,
        "history": result.history,
        "device": result.device,
        "peak_cuda_mib": (result.peak_memory_bytes or 0) / 2**20,
    }


def dpddp_on_cuda(d: int = 400) -> dict[str, Any]:
    """DPDDP (train.world_size) over 2 GPUs with nccl: all-zero inputs to a bias-free linear
    model, so the weights' change after T steps is the noise alone, std lr·σC·√T/(qP) when it
    enters once (√2 times that if both ranks added it); ranks' weights equal (checked inside)."""
    import math

    import numpy as np
    import torch

    from dpgov.training import trainer
    from dpgov.training.distributed import train_patient_level_distributed
    from dpgov.training.params import TrainParams

    if torch.cuda.device_count() < 2:
        return {"skipped": f"needs 2 GPUs, found {torch.cuda.device_count()}"}
    n = 80
    pid = np.array([f"p{i // 2:02d}" for i in range(n)])  # 40 patients, 2 records each
    x, y = np.zeros((n, d), dtype=np.float32), (np.arange(n) % 2).astype(np.float32)
    plan = trainer.sampling_plan(n=40, batch_size=10, epochs=5)
    model = torch.nn.Sequential(torch.nn.Linear(d, 1, bias=False), torch.nn.Flatten(0))
    before = model[0].weight.detach().clone()
    cfg = TrainParams(device="cuda", noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=1.0)
    result, ranks = train_patient_level_distributed(
        model, x, y, pid, plan=plan, noise_multiplier=1.0, max_grad_norm=1.0,
        max_images_per_patient_step=2, cfg=cfg, world_size=2, backend="nccl",
    )  # fmt: skip
    change = (result.model[0].weight.detach() - before).numpy().ravel()
    ratio = float(np.sqrt(np.mean(change**2))) / (math.sqrt(plan.steps) / plan.expected_batch_size)
    shards = [set(r.patients) for r in ranks]
    ok = (
        abs(ratio - 1) < 0.14
        and result.history == [(1.0, plan.sample_rate, plan.steps)]
        and not shards[0] & shards[1]
    )
    return {"ok": ok, "noise_std_ratio": ratio, "steps": result.steps, "world_size": 2}


def amp_norms_on_cuda(n: int = 64, clip: float = 0.05) -> dict[str, Any]:
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from torch import nn

    from dpgov.training.precision import autocast, grad_samples_to_fp32

    dev = torch.device("cuda")

    def norms(cast: bool) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.ReLU(), nn.Flatten(),
            nn.Linear(16 * 30 * 30, 1), nn.Flatten(0),
        ).to(dev)  # fmt: skip
        gsm = GradSampleModule(model)
        opt = DPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            noise_multiplier=0.0,
            max_grad_norm=clip,
            expected_batch_size=1,
        )
        x = torch.randn(n, 3, 32, 32, device=dev) * 5
        y = (torch.rand(n, device=dev) > 0.5).float()
        out_norms = []
        for i in range(n):
            opt.zero_grad(set_to_none=True)
            with autocast("amp", dev):
                out = gsm(x[i : i + 1])
            nn.functional.binary_cross_entropy_with_logits(out.float(), y[i : i + 1]).backward()
            if cast:
                grad_samples_to_fp32(opt.params)
            opt.clip_and_accumulate()
            total = sum(float((p.summed_grad.double() ** 2).sum()) for p in opt.params)
            out_norms.append(total**0.5)
        gsm._close()
        return out_norms

    fixed, raw = norms(True), norms(False)
    return {
        "ok": max(fixed) <= clip * (1 + 1e-5),
        "max_ratio_fp32_cast": max(fixed) / clip,
        "max_ratio_bfloat16_uncast": max(raw) / clip,
        "examples": n,
    }


def throughput(*, quick: bool) -> list[dict[str, Any]]:
    import torch

    from dpgov.training import trainer
    from dpgov.training.params import TrainParams

    side, batch = 224, 64
    n = batch * (6 if quick else 12)
    x, y = _images(n, side)
    dev = torch.device("cuda")
    rows = []
    for variant in ("nonprivate", "dp", "dp-amp"):
        cfg = TrainParams(
            epochs=2,
            batch_size=batch,
            max_physical_batch_size=batch,
            learning_rate=0.05,
            device="cuda",
            precision="amp" if variant == "dp-amp" else "fp32",
        )
        model = build(side)
        if variant == "nonprivate":
            r = trainer.train_nonprivate(
                model, x, y, batch_size=batch, epochs=2, cfg=cfg, device=dev
            )
        else:
            plan = trainer.sampling_plan(n=n, batch_size=batch, epochs=2)
            r = trainer.train_private(
                model, x, y, plan=plan, noise_multiplier=1.0, max_grad_norm=1.0, cfg=cfg,
                device=dev, grad_sample_mode="hooks",
            )  # fmt: skip
        t = statistics.median(r.epoch_seconds[1:] or r.epoch_seconds)
        rows.append(
            {
                "variant": variant,
                "seconds_per_epoch": t,
                "samples_per_second": n / t,
                "peak_cuda_mib": (r.peak_memory_bytes or 0) / 2**20,
                "n": n,
                "batch": batch,
            }
        )
        del model, r
        torch.cuda.empty_cache()
    base_t = rows[0]["seconds_per_epoch"]
    base_m = rows[0]["peak_cuda_mib"] or 1.0
    for row in rows:
        row["time_ratio"] = row["seconds_per_epoch"] / base_t
        row["memory_ratio"] = row["peak_cuda_mib"] / base_m
    return rows


def markdown(out: dict[str, Any]) -> str:
    lines = [
        "# GPU checks (issue 19): DP step, amp norms, 224×224 throughput",
        "",
        f"Machine: {out['machine']}; GPU {out['gpu']}; torch {out['torch']}; {out['when']}; "
        f"`benchmarks/gpu_check.py` ({out['seconds']:.0f} s).",
        "",
    ]
    s = out.get("dp_step")
    if s:
        lines.append(
            f"- DP step on CUDA: {'ok' if s['ok'] else 'FAILED'} ({s['steps']} steps, history "
            f"{s['history']}, peak {s['peak_cuda_mib']:.0f} MiB)."
        )
    a = out.get("amp_norms")
    if a:
        lines.append(
            f"- amp norms on CUDA: {'ok' if a['ok'] else 'FAILED'}: largest clipped norm / C "
            f"{a['max_ratio_fp32_cast']:.7f} with the fp32 cast, "
            f"{a['max_ratio_bfloat16_uncast']:.5f} without it ({a['examples']} examples)."
        )
    g = out.get("dpddp")
    if g:
        lines.append(
            f"- DPDDP over 2 GPUs (nccl): skipped, {g['skipped']}."
            if "skipped" in g
            else f"- DPDDP over 2 GPUs (nccl): {'ok' if g['ok'] else 'FAILED'}: update noise "
            f"std / (lr·σC·√T/qP) {g['noise_std_ratio']:.3f} (√2 = 1.414 would be noise "
            f"from both ranks), {g['steps']} steps, ranks' weights equal."
        )
    rows = out.get("throughput") or []
    if rows:
        lines += [
            "",
            f"ResNet-18 (GroupNorm) at 3×224×224, batch {rows[0]['batch']}, {rows[0]['n']} "
            "generated images, epoch 2 timed (epoch 1 warm-up); ratios against non-private.",
            "",
            "| variant | s / epoch | samples / s | time ratio | peak CUDA MiB | memory ratio |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['variant']} | {r['seconds_per_epoch']:.2f} | {r['samples_per_second']:.0f} | "
            f"{r['time_ratio']:.2f} | {r['peak_cuda_mib']:.0f} | {r['memory_ratio']:.2f} |"
            for r in rows
        ]
    for name, err in (out.get("errors") or {}).items():
        lines.append(f"- {name}: ERROR {err}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE))
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check", file=sys.stderr)
        return 2
    signal.alarm(BUDGET_S)  # a hung check ends the script (SIGALRM) before 8 minutes
    started = time.perf_counter()
    out: dict[str, Any] = {
        "machine": machine(),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "when": stamp(),
        "errors": {},
    }
    for name, fn in (
        ("dp_step", dp_step_on_cuda),
        ("amp_norms", amp_norms_on_cuda),
        ("dpddp", dpddp_on_cuda),
        ("throughput", lambda: throughput(quick=args.quick)),
    ):
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as err:  # record and go on: the other checks still report
            out["errors"][name] = f"{type(err).__name__}: {str(err)[:300]}"
        print(f"gpu_check: {name} {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    out["seconds"] = time.perf_counter() - started
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_check.json").write_text(json.dumps(out, indent=2, default=str))
    text = markdown(out)
    (folder / "RESULTS_gpu.md").write_text(text)
    print(text)
    failed = out["errors"] or not all(
        out.get(k, {}).get("ok", False) for k in ("dp_step", "amp_norms")
    )
    failed = failed or not out.get("dpddp", {}).get("ok", "skipped" in out.get("dpddp", {}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
