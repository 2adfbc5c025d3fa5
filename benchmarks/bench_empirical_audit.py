"""Empirical privacy audit benchmarks (issue 18): the one-run lower bound beside the claim.

1. The bundled flchain cohort (training split, MLP [64, 32], batch 512, 10 epochs, C = 5,
   SGD lr 0.2: the default params) at ε = 1, 3, 8 (σ calibrated, PLD, δ = 1e-5): the
   white-box lower bound with m canaries, the ceiling for that m, and black-box at each ε.
2. Detection of each broken variant at the claimed ε = 1: noise off, noise × 0.1, a true
   sample rate ten times the charged one, and shuffled fixed-size batches under Poisson
   accounting.
3. Wall time of an audit against the candidate's own training (dpgov's trainer, the same
   mechanism, ghost clipping as the default picks) in the same invocation: target ≤ 3×.

    .venv/bin/python benchmarks/bench_empirical_audit.py [--canaries 1000] [--seeds 3]
        [--json out.json] [--out benchmarks/RESULTS_empirical_audit.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from _machine import machine, stamp

DELTA = 1e-5
BATCH, EPOCHS, CLIP, LR = 512, 10, 5.0, 0.2


def _flchain(home: Path) -> Any:
    from dpgov.data import load_prepared, prepare
    from dpgov.training.inputs import arrays

    out = home / "prepared" / "flchain"
    if not (out / "meta.json").exists():
        prepare(None, None, out=out, register=False)
    data = load_prepared(out)
    return data, arrays(data, "train")


def _model(meta: dict[str, Any], seed: int) -> Any:
    import torch

    from dpgov.training.models import build_model, input_spec
    from dpgov.training.params import ModelParams

    torch.manual_seed(seed)
    return build_model(ModelParams(name="mlp", hidden=[64, 32]), input_spec(meta))


def _cfg(seed: int) -> Any:
    return SimpleNamespace(
        optimizer="sgd",
        learning_rate=LR,
        momentum=0.0,
        seed=seed,
        secure_rng=False,
        reproducible_noise=False,
        max_physical_batch_size=4 * BATCH,
    )


def _train_seconds(data: Any, train: Any, plan: Any, sigma: float) -> float:
    """Wall time of dpgov's own DP-SGD on the same mechanism (set-up included, like the audit)."""
    from dpgov.training.trainer import choose_grad_sample_mode, resolve_device, train_private

    model = _model(data.meta, 0)
    t0 = time.perf_counter()
    train_private(
        model,
        train.x,
        train.y,
        plan=plan,
        noise_multiplier=sigma,
        max_grad_norm=CLIP,
        cfg=_cfg(0),
        device=resolve_device("cpu"),
        grad_sample_mode=choose_grad_sample_mode("auto", model),
    )
    return time.perf_counter() - t0


def _audit(
    data: Any,
    train: Any,
    mech: Any,
    claimed: float,
    m: int,
    threat: str,
    seed: int,
    breakage: Any = None,
) -> dict[str, Any]:
    from dpgov.training.canary_audit import run_audit

    t0 = time.perf_counter()
    r = run_audit(
        _model(data.meta, seed),
        train.x,
        train.y,
        mechanism=mech,
        epsilon_claimed=claimed,
        delta=DELTA,
        cfg=_cfg(seed),
        canaries=m,
        threat_model=threat,
        seed=seed,
        _breakage=breakage,
    )
    return {**r.to_dict(), "wall": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS_empirical_audit.md"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # one thread each: the shared 2-core machine is oversubscribed
    from dpgov.accounting import calibrate_noise_multiplier, epsilon
    from dpgov.accounting.mechanism import DpSgdMechanism
    from dpgov.training.canary_audit import BLACK_BOX, WHITE_BOX, AuditMechanism, Breakage
    from dpgov.training.trainer import sampling_plan

    started = stamp()
    m, seeds = args.canaries, list(range(1, args.seeds + 1))
    with tempfile.TemporaryDirectory() as tmp:
        data, train = _flchain(Path(tmp))
    plan = sampling_plan(n=len(train.y), batch_size=BATCH, epochs=EPOCHS)
    q, steps = plan.sample_rate, plan.steps
    rows: list[dict[str, Any]] = []
    mechs: dict[float, tuple[Any, float]] = {}
    for target in (1.0, 3.0, 8.0):
        sigma = calibrate_noise_multiplier(
            target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps
        )
        claimed = epsilon(
            [DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)], delta=DELTA
        )
        mech = AuditMechanism(
            noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=CLIP
        )
        mechs[target] = (mech, claimed)
        per_threat: dict[str, list[dict[str, Any]]] = {WHITE_BOX: [], BLACK_BOX: []}
        train_times = []
        for s in seeds:  # alternate training and audits, so load from other work hits both
            train_times.append(_train_seconds(data, train, plan, sigma))
            for threat in (WHITE_BOX, BLACK_BOX):
                per_threat[threat].append(_audit(data, train, mech, claimed, m, threat, s))
        train_s = min(train_times)
        for threat, runs in per_threat.items():
            lbs = [r["epsilon_lower_bound"] for r in runs]
            rows.append(
                {
                    "target": target,
                    "sigma": sigma,
                    "claimed": claimed,
                    "threat": threat,
                    "bounds": lbs,
                    "median": statistics.median(lbs),
                    "max": max(lbs),
                    "ceiling": runs[0]["ceiling"],
                    "passed": all(r["passed"] for r in runs),
                    "audit_s": min(r["wall"] for r in runs),
                    "train_s": train_s,
                }
            )
            print(rows[-1], flush=True)

    mech1, claimed1 = mechs[1.0]
    broken: list[dict[str, Any]] = []
    for name, brk in [
        ("noise off", Breakage(noise_scale=0.0)),
        ("noise × 0.1", Breakage(noise_scale=0.1)),
        ("sample rate × 10 (charged 10× too small)", Breakage(sample_rate_factor=10.0)),
        ("shuffled batches, Poisson accounting", Breakage(shuffled=True)),
    ]:
        runs = [_audit(data, train, mech1, claimed1, m, WHITE_BOX, s, brk) for s in seeds]
        lbs = [r["epsilon_lower_bound"] for r in runs]
        broken.append(
            {
                "variant": name,
                "bounds": lbs,
                "detected": sum(not r["passed"] for r in runs),
                "runs": len(runs),
                "ceiling": runs[0]["ceiling"],
            }
        )
        print(broken[-1], flush=True)

    out = {
        "machine": machine(),
        "started": started,
        "load": [round(x, 2) for x in os.getloadavg()],
        "n": len(train.y),
        "q": q,
        "steps": steps,
        "canaries": m,
        "seeds": seeds,
        "rows": rows,
        "broken": broken,
        "claimed_for_broken": claimed1,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    args.out.write_text(_markdown(out))
    print(f"wrote {args.out}")


def _markdown(o: dict[str, Any]) -> str:
    f = "{:.3f}".format
    lines = [
        "# Empirical privacy audit (issue 18)",
        "",
        f"- **Run**: {o['started']} on {o['machine']}"
        + (f" (load average at the end {o['load'][0]:g})" if "load" in o else "")
        + "; CPU only (this task's audit runs on "
        "the CPU), torch on one thread. Times: set-up included, minimum over the seeds, "
        "training and audits alternating.",
        "- **Command**: `.venv/bin/python benchmarks/bench_empirical_audit.py "
        f"--canaries {o['canaries']} --seeds {len(o['seeds'])}`.",
        f"- **Cohort**: bundled flchain, training split, N = {o['n']}, MLP [64, 32], batch "
        f"{BATCH} (q = {o['q']:.5f}), {EPOCHS} epochs (T = {o['steps']}), C = {CLIP:g}, SGD lr "
        f"{LR:g}; σ calibrated (PLD) to each ε at δ = {DELTA:g}.",
        f"- **Audit**: m = {o['canaries']} canaries, each in with probability ½; guesses over "
        "the grid 5/10/20/50 % of m fixed in advance (union bound); 95 % confidence; seeds "
        f"{', '.join(map(str, o['seeds']))} (canary draws, noise, masks).",
        "",
        "## 1. Lower bound vs claimed ε, with the ceiling for this m",
        "",
        "| target ε | σ | claimed ε | threat model | lower bound per seed | ceiling | "
        "passed | audit s | training s | audit / training |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in o["rows"]:
        lines.append(
            f"| {r['target']:g} | {r['sigma']:.3f} | {f(r['claimed'])} | {r['threat']} | "
            f"{', '.join(f(b) for b in r['bounds'])} | {f(r['ceiling'])} | "
            f"{'yes' if r['passed'] else 'NO'} | {r['audit_s']:.2f} | {r['train_s']:.2f} | "
            f"{r['audit_s'] / r['train_s']:.2f}× |"
        )
    lines += [
        "",
        f"## 2. Broken mechanisms at claimed ε = {f(o['claimed_for_broken'])} (white-box)",
        "",
        "| variant | lower bound per seed | detected | ceiling |",
        "|---|---|---|---|",
    ]
    for b in o["broken"]:
        lines.append(
            f"| {b['variant']} | {', '.join(f(x) for x in b['bounds'])} | "
            f"{b['detected']}/{b['runs']} | {f(b['ceiling'])} |"
        )
    wb = [r for r in o["rows"] if r["threat"] == "white-box"]
    worst = max(r["audit_s"] / r["train_s"] for r in wb)
    over = [r for r in o["rows"] if not r["passed"]]
    shuffled = next(b for b in o["broken"] if b["variant"].startswith("shuffled"))
    lines += [
        "",
        "## Reading",
        "",
        f"- Wall time: a white-box audit took at most {worst:.2f}× the candidate's training "
        f"in this run (target ≤ 3×: {'met' if worst <= 3 else 'MISSED'}); the audit runs "
        "Opacus's hooks (per-sample gradients materialised, plus the m-coordinate audit "
        "block) where training runs ghost clipping.",
        f"- Correct mechanism: {'no' if not over else len(over)} audit of the "
        f"{len(o['rows'])} rows above exceeded its claimed ε. White-box bounds are well "
        "below the claims and capped by the ceiling for this m (so at ε = 8 the audit could "
        "never show more than the ceiling); black-box input canaries show about nothing at "
        "these ε: the auditor sees only the final model.",
        "- Broken mechanisms: "
        + "; ".join(f"{b['variant']} {b['detected']}/{b['runs']}" for b in o["broken"])
        + ".",
        f"- Shuffled batches were detected in {shuffled['detected']}/{shuffled['runs']} "
        "seeds: under shuffling every unit still enters about qT batches, and this canary "
        "game (independent canaries, a likelihood-ratio score per coordinate) does not play "
        "the worst case in which shuffling leaks more than Poisson accounting says. The same "
        "seeds draw the same canaries and noise as the correct rows, so the two are paired.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
