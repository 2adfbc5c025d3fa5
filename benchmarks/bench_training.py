"""Training benchmarks: the cost of DP-SGD, and what privacy costs in utility and fairness.

1. Speed and memory: DP-SGD (Opacus) against plain SGD, same model, data, expected batch size
   and epochs, in the same invocation, for the tabular MLP (bundled flchain) and the CNN
   (generated 1×28×28 images). Each variant runs in its own child process, so its peak
   resident memory (CPU) or peak allocated memory (CUDA) is its own; variants alternate over
   ``--repeats`` rounds to spread out noise from other work on the machine. Both sides use
   the vectorised loader (:mod:`dpgov.training.poisson_loader`, issue 21); the ``…:rows``
   variants rerun a side with the row-by-row loaders of before (Opacus's ``DPDataLoader`` over
   a ``TensorDataset``; a shuffled ``DataLoader``) to show what the loader changed. The load
   average is recorded at the start and the end: the machine may be shared.
2. Utility: AUROC on the flchain test split at ε = 1, 3, 8 (σ calibrated from a fresh budget,
   PLD, δ = 1e-5) beside the non-private reference, with subgroup AUROC and gaps, over
   ``--seeds`` seeds.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--json out.json]

Variants: ``nonprivate``; DP with ``bk`` (book-keeping clipping, :mod:`dpgov.training.bk_clipping`),
``ghost`` or ``hooks``. The ResNet-18-GN case (MONAI's, through ``model.factory``) needs
``monai``. ``--steps K`` instead times K optimizer steps of every variant interleaved step by
step in one process (:func:`steps_interleaved`): on a shared machine that ratio is far less
sensitive to the others' load than children run minutes apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


# --------------------------------------------------------------------------- data


def _flchain(home: Path) -> Any:
    """The bundled flchain cohort, prepared (no ledger registration) into ``home``."""
    from dpgov.data import load_prepared, prepare

    out = home / "prepared" / "flchain"
    if not (out / "meta.json").exists():
        prepare(None, None, out=out, register=False)
    return load_prepared(out)


def _images(n_train: int, n_test: int, size: int = 28) -> Any:
    from dpgov.testing.memory import make_images

    return make_images(n_train=n_train, n_test=n_test, size=size, seed=0)


RESNET = {  # MONAI's ResNet-18 through model.factory: BatchNorm → GroupNorm (docs/models.md)
    "factory": "monai.networks.nets:resnet18",
    "kwargs": {"spatial_dims": 2, "n_input_channels": 1, "num_classes": 1},
}


# --------------------------------------------------------------------------- speed (child)


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one variant and report seconds per epoch and peak memory."""
    import resource
    import warnings

    import torch

    from dpgov.training import trainer
    from dpgov.training.models import build_model, input_spec
    from dpgov.training.params import parse_params

    warnings.filterwarnings("ignore")
    variant, _, loader = spec["variant"].partition(":")
    if loader == "rows":  # the row-by-row loaders of before issue 21, for comparison
        from dpgov.training import poisson_loader

        poisson_loader.usable = lambda *_a: False  # type: ignore[assignment]
        poisson_loader.in_memory = lambda _x: False  # type: ignore[assignment]
    torch.set_num_threads(int(spec.get("threads", torch.get_num_threads())))
    data = (
        _flchain(Path(spec["home"]))
        if spec["data"] == "flchain"
        else _images(spec["n_train"], 200, spec.get("size", 28))
    )
    x = data.features("train").astype("float32")
    if data.meta["kind"] == "image":
        x = x.reshape(len(x), *data.meta["image_shape"])
    y = data.labels("train").astype("float32")
    params = parse_params(
        {
            "train": {
                "epochs": spec["epochs"],
                "batch_size": spec["batch"],
                "max_physical_batch_size": spec["batch"] * 4,
                "learning_rate": 0.2,
                "max_grad_norm": 5.0,
                "device": spec["device"],
            },
            "model": RESNET if spec["model"] == "resnet18" else {"name": spec["model"]},
        }
    )
    device = trainer.resolve_device(spec["device"])
    model = build_model(
        params.model, input_spec(data.meta), allowed_factories=["monai.networks.nets:*"]
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if variant == "nonprivate":
        result = trainer.train_nonprivate(
            model,
            x,
            y,
            batch_size=spec["batch"],
            epochs=spec["epochs"],
            cfg=params.train,
            device=device,
        )
    else:
        plan = trainer.sampling_plan(n=len(y), batch_size=spec["batch"], epochs=spec["epochs"])
        result = trainer.train_private(
            model,
            x,
            y,
            plan=plan,
            noise_multiplier=1.0,
            max_grad_norm=5.0,
            cfg=params.train,
            device=device,
            grad_sample_mode=variant,
        )
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    epochs = result.epoch_seconds[1:] or result.epoch_seconds  # first epoch warms up
    return {
        "seconds_per_epoch": statistics.median(epochs),
        "samples_per_second": len(y) / statistics.median(epochs),
        "peak_rss_bytes": rss_after,
        "rss_growth_bytes": max(0, rss_after - rss_before),
        "peak_cuda_bytes": result.peak_memory_bytes,
        "n_train": len(y),
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


def speed(
    home: Path,
    *,
    repeats: int,
    quick: bool,
    device: str,
    only: list[str] | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = [
        {
            "name": "tabular MLP (flchain)",
            "data": "flchain",
            "model": "mlp",
            "batch": 512,
            "epochs": 4 if quick else 20,
            "variants": ["nonprivate", "bk", "ghost", "hooks", "nonprivate:rows", "ghost:rows"],
        },
        {
            "name": "CNN (1×28×28 generated)",
            "data": "images",
            "model": "cnn",
            "batch": 128,
            "n_train": 1024 if quick else 4096,
            "epochs": 2 if quick else 3,
            "variants": ["nonprivate", "bk", "hooks", "ghost", "nonprivate:rows", "hooks:rows"],
        },
        {
            # ghost has no Conv2d/GroupNorm norm sampler in Opacus 1.6 (it falls back to
            # per-example gradients and a second pass: slower than hooks, see the CNN)
            "name": "ResNet-18-GN (1×32×32 generated)",
            "data": "images",
            "model": "resnet18",
            "size": 32,
            "batch": 32,
            "n_train": 64 if quick else 128,
            "epochs": 2,
            "variants": ["nonprivate", "bk", "hooks"],
        },
    ]
    if only:
        cases = [c for c in cases if c["model"] in only]
    rows = []
    for case in cases:
        if threads:
            case["threads"] = threads
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in case["variants"]}
        for _ in range(repeats):
            for variant in case["variants"]:
                spec = {
                    **{k: v for k, v in case.items() if k not in ("name", "variants")},
                    "variant": variant,
                    "home": str(home),
                    "device": device,
                }
                spec.setdefault("n_train", 0)
                results[variant].append(_run_child(spec))
        base_t = min(r["seconds_per_epoch"] for r in results["nonprivate"])
        base_m = min(r["peak_rss_bytes"] for r in results["nonprivate"])
        base_g = [r["peak_cuda_bytes"] for r in results["nonprivate"]]
        rows_t = min(
            (r["seconds_per_epoch"] for r in results.get("nonprivate:rows", [])), default=None
        )
        rounds = [r["seconds_per_epoch"] for r in results["nonprivate"]]
        for variant, runs in results.items():
            t = min(r["seconds_per_epoch"] for r in runs)
            own_base = rows_t if variant.endswith(":rows") and rows_t else base_t
            # per round: this variant over the non-private run of the same round (interleaved)
            per_round = [r["seconds_per_epoch"] / b for r, b in zip(runs, rounds, strict=True)]
            m = min(r["peak_rss_bytes"] for r in runs)
            g = [r["peak_cuda_bytes"] for r in runs]
            rows.append(
                {
                    "case": case["name"],
                    "variant": variant,
                    "batch": case["batch"],
                    "n_train": runs[0]["n_train"],
                    "seconds_per_epoch": t,
                    "seconds_per_epoch_all": [r["seconds_per_epoch"] for r in runs],
                    "samples_per_second": runs[0]["n_train"] / t,
                    "time_ratio": t / base_t,
                    "time_ratio_same_loader": t / own_base,
                    "time_ratio_rounds": per_round,
                    "time_ratio_median_round": statistics.median(per_round),
                    "peak_rss_mib": m / 2**20,
                    "memory_ratio": m / base_m,
                    "peak_cuda_mib": (min(g) / 2**20) if g[0] is not None else None,
                    "cuda_memory_ratio": (min(g) / min(base_g)) if g[0] is not None else None,
                }
            )
    return rows


def _step_models(case: str) -> tuple[Any, Any, Any]:
    """(model, x, y) of one expected batch of ``case`` (mlp, cnn, resnet18) for step timing."""
    import torch

    from dpgov.training.models import InputSpec, build_model
    from dpgov.training.params import parse_params

    g = torch.Generator().manual_seed(0)
    if case == "mlp":
        spec, x = InputSpec("tabular", 9), torch.randn(512, 9, generator=g)
        cfg = parse_params({"model": {"name": "mlp"}}).model
    elif case == "cnn":
        spec = InputSpec("image", 784, image_shape=(1, 28, 28))
        x = torch.randn(128, 1, 28, 28, generator=g)
        cfg = parse_params({"model": {"name": "cnn"}}).model
    else:
        spec = InputSpec("image", 1024, image_shape=(1, 32, 32))
        x, cfg = torch.randn(32, 1, 32, 32, generator=g), parse_params({"model": RESNET}).model
    model = build_model(cfg, spec, allowed_factories=["monai.networks.nets:*"])
    return model, x, (torch.rand(len(x), generator=g) > 0.5).float()


def steps_interleaved(case: str, variants: list[str], steps: int) -> dict[str, Any]:
    """Seconds per optimizer step, the variants alternating step by step in one process.

    Children minutes apart see different load on a shared machine; here every variant's
    k-th step runs within a second of the others', so the ratio of medians is far less
    sensitive to it. Fixed batch (the expected Poisson batch), SGD, σ = 1, C = 5."""
    import copy
    import warnings

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from dpgov.training import bk_opacus

    warnings.filterwarnings("ignore")
    model, x, y = _step_models(case)
    crit = torch.nn.BCEWithLogitsLoss()
    runs: dict[str, Any] = {}
    for v in variants:
        m = copy.deepcopy(model).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        if v == "nonprivate":
            runs[v] = (m, opt, crit)
            continue
        engine = bk_opacus.privacy_engine(v, accountant="rdp")
        loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
        out = engine.make_private(
            module=m,
            optimizer=opt,
            criterion=crit,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=5.0,
            grad_sample_mode=v,
            poisson_sampling=False,
        )
        runs[v] = (out[0], out[1], out[2] if v == "ghost" else crit)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for k in range(steps + 2):  # two warm-up steps each
        for v in variants:
            m, opt, loss_fn = runs[v]
            t0 = time.perf_counter()
            opt.zero_grad()
            loss_fn(m(x).reshape(-1), y).backward()
            opt.step()
            if k >= 2:
                times[v].append(time.perf_counter() - t0)
    base = statistics.median(times["nonprivate"])
    return {
        v: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "ratio_median": statistics.median(t) / base,
            "ratio_min": min(t) / min(times["nonprivate"]),
        }
        for v, t in times.items()
    }


# --------------------------------------------------------------------------- utility


def utility(home: Path, *, seeds: int, quick: bool) -> dict[str, Any]:
    import logging
    import warnings

    from dpgov.accounting import calibrate_noise_multiplier
    from dpgov.training import trainer
    from dpgov.training.evaluate import evaluate
    from dpgov.training.models import build_model, input_spec
    from dpgov.training.params import embedded_params_path, load_params

    warnings.filterwarnings("ignore")
    logging.getLogger("absl").setLevel(logging.ERROR)
    data = _flchain(home)
    defaults = load_params(embedded_params_path())
    cfg0 = defaults.train
    x, y = data.features("train"), data.labels("train").astype("float32")
    xt, yt = data.features("test"), data.labels("test")
    sens = data.test[list(data.meta["sensitive"])].astype(str).reset_index(drop=True)
    plan = trainer.sampling_plan(n=len(y), batch_size=cfg0.batch_size, epochs=cfg0.epochs)
    cpu = trainer.resolve_device("cpu")
    eps_grid = [1.0, 3.0, 8.0]
    out: dict[str, Any] = {
        "settings": {
            "model": defaults.model.name,
            "hidden": defaults.model.hidden,
            "epochs": cfg0.epochs,
            "batch_size": cfg0.batch_size,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps,
            "learning_rate": cfg0.learning_rate,
            "max_grad_norm": cfg0.max_grad_norm,
            "delta": 1e-5,
            "accountant": "pld",
            "n_train": len(y),
            "n_test": len(yt),
            "min_group_n": cfg0.min_group_n,
            "n_boot": 0 if quick else cfg0.n_boot,
        },
        "rows": [],
    }
    sigmas = {
        e: calibrate_noise_multiplier(
            target_epsilon=e, delta=1e-5, sample_rate=plan.sample_rate, steps=plan.steps
        )
        for e in eps_grid
    }
    out["settings"]["noise_multipliers"] = sigmas
    for seed in range(seeds):
        cfg = cfg0.model_copy(update={"seed": seed})
        variants: list[tuple[str, float | None]] = [("non-private", None)]
        variants += [(f"ε={e:g}", sigmas[e]) for e in eps_grid]
        for label, sigma in variants:
            trainer.seed_everything(seed)
            model = build_model(defaults.model, input_spec(data.meta))
            if sigma is None:
                res = trainer.train_nonprivate(
                    model, x, y, batch_size=cfg.batch_size, epochs=cfg.epochs, cfg=cfg, device=cpu
                )
            else:
                res = trainer.train_private(
                    model,
                    x,
                    y,
                    plan=plan,
                    noise_multiplier=sigma,
                    max_grad_norm=cfg.max_grad_norm,
                    cfg=cfg,
                    device=cpu,
                    grad_sample_mode="ghost",
                )
            ev = evaluate(
                yt,
                trainer.predict_scores(res.model, xt),
                sens,
                threshold=cfg.threshold,
                n_boot=out["settings"]["n_boot"],
                seed=seed,
                min_group_n=cfg.min_group_n,
            )
            out["rows"].append(
                {
                    "seed": seed,
                    "variant": label,
                    "auroc": ev.auroc,
                    "auroc_lo": ev.auroc_lo,
                    "auroc_hi": ev.auroc_hi,
                    "calibration_error": ev.calibration_error,
                    "brier": ev.brier,
                    "subgroup_auroc": {f"{s.attribute}={s.group}": s.auroc for s in ev.subgroups},
                    "gaps": {f"{g.attribute}.{g.metric}": g.gap for g in ev.gaps},
                }
            )
    return out


# --------------------------------------------------------------------------- report


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Run {result['date']} on {result['machine']}; command `{result['command']}`.", ""]
    if result.get("speed"):
        lines += [
            "### DP-SGD against plain SGD (same model, data, batch, run)",
            "",
            f"Load average (1 min) at start {result.get('load_start', '-')}, at end "
            f"{result.get('load_end', '-')}. time × = min s/epoch over the non-private "
            "(vectorised loader) min; per round = each round's ratio to the non-private run "
            "of the same round; same loader = a :rows variant over nonprivate:rows.",
            "",
            "| case | variant | N | batch | s/epoch (min of rounds) | samples/s | time × | "
            "per round × | same loader × | peak RSS MiB | memory × |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["speed"]:
            rounds = ", ".join(f"{x:.2f}" for x in r.get("time_ratio_rounds", []))
            if r.get("time_ratio_median_round") is not None:
                rounds = f"median {r['time_ratio_median_round']:.2f} ({rounds})"
            lines.append(
                f"| {r['case']} | {r['variant']} | {r['n_train']} | {r['batch']} | "
                f"{r['seconds_per_epoch']:.3f} | {r['samples_per_second']:.0f} | "
                f"{r['time_ratio']:.2f} | {rounds} | {r.get('time_ratio_same_loader', 0):.2f} | "
                f"{r['peak_rss_mib']:.0f} | {r['memory_ratio']:.2f} |"
            )
        lines.append("")
    if result.get("utility"):
        u = result["utility"]
        s = u["settings"]
        lines += [
            "### Utility on flchain (test split)",
            "",
            f"MLP {s['hidden']}, {s['epochs']} epochs, expected batch "
            f"{s['sample_rate'] * s['n_train']:.0f} (q = {s['sample_rate']:.4g}, "
            f"T = {s['steps']}), lr {s['learning_rate']}, C = {s['max_grad_norm']}, "
            f"δ = 1e-5, PLD; σ: "
            + ", ".join(f"ε={float(k):g} → {v:.3f}" for k, v in s["noise_multipliers"].items())
            + ".",
            "",
            "| variant | AUROC (mean ± sd over seeds) | ECE | gap sex AUROC | "
            "gap age AUROC | gap sex FNR | gap age FNR |",
            "|---|---|---|---|---|---|---|",
        ]
        variants = list(dict.fromkeys(r["variant"] for r in u["rows"]))
        for v in variants:
            rows = [r for r in u["rows"] if r["variant"] == v]
            lines.append(
                f"| {v} | {_mean_sd([r['auroc'] for r in rows])} | "
                f"{_mean_sd([r['calibration_error'] for r in rows])} | "
                f"{_mean_sd([r['gaps'].get('sex.auroc') for r in rows])} | "
                f"{_mean_sd([r['gaps'].get('age_band.auroc') for r in rows])} | "
                f"{_mean_sd([r['gaps'].get('sex.fnr') for r in rows])} | "
                f"{_mean_sd([r['gaps'].get('age_band.fnr') for r in rows])} |"
            )
        groups = list(u["rows"][0]["subgroup_auroc"])
        lines += [
            "",
            "Subgroup AUROC (mean over seeds):",
            "",
            "| variant | " + " | ".join(groups) + " |",
            "|---|" + "---|" * len(groups),
        ]
        for v in variants:
            rows = [r for r in u["rows"] if r["variant"] == v]
            cells = []
            for g in groups:
                vals = [r["subgroup_auroc"].get(g) for r in rows]
                vals = [x for x in vals if x is not None]
                cells.append(f"{statistics.mean(vals):.3f}" if vals else "-")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer epochs and rows")
    parser.add_argument("--repeats", type=int, default=3, help="alternating speed rounds")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the utility table")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--cases", help="speed cases to run, e.g. mlp or mlp,cnn (default all)")
    parser.add_argument("--threads", type=int, help="torch threads per child (default torch's)")
    parser.add_argument("--skip-utility", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--steps",
        type=int,
        help="instead: time this many optimizer steps per variant, interleaved in one process",
    )
    args = parser.parse_args()
    if args.steps:
        import torch

        torch.set_num_threads(args.threads or torch.get_num_threads())
        out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        out["load_start"] = f"{os.getloadavg()[0]:.1f}"
        for case, variants in (
            ("mlp", ["nonprivate", "bk", "ghost", "hooks"]),
            ("cnn", ["nonprivate", "bk", "hooks", "ghost"]),
            ("resnet18", ["nonprivate", "bk", "hooks"]),
        ):
            if args.cases and case not in args.cases.split(","):
                continue
            out[case] = steps_interleaved(case, variants, args.steps)
            for v, r in out[case].items():
                print(
                    f"{case} {v}: median {r['median_s'] * 1e3:.2f} ms/step, "
                    f"× {r['ratio_median']:.2f} (min-ratio {r['ratio_min']:.2f})",
                    flush=True,
                )
        out["load_end"] = f"{os.getloadavg()[0]:.1f}"
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dpgov-bench-") as tmp:
        home = Path(tmp)
        os.environ["DPGOV_HOME"] = str(home)
        _flchain(home)
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"device {args.device}",
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        }
        result["load_start"] = f"{os.getloadavg()[0]:.1f}"
        if not args.skip_speed:
            result["speed"] = speed(
                home,
                repeats=args.repeats,
                quick=args.quick,
                device=args.device,
                only=args.cases.split(",") if args.cases else None,
                threads=args.threads,
            )
        if not args.skip_utility:
            result["utility"] = utility(home, seeds=args.seeds, quick=args.quick)
    result["load_end"] = f"{os.getloadavg()[0]:.1f}"
    result["seconds"] = time.time() - started
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print(markdown(result))
    print(f"\n(total {result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
