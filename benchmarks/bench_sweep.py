"""The privacy–utility–fairness tradeoff of the bundled flchain cohort, through `dpgov sweep`.

In a fresh ``$DPGOV_HOME`` (a temporary folder unless ``--home``): prepare the bundled flchain
data, show that the default policy (ε 8 per block) refuses the sweep, dry-run it under
``benchmarks/sweep_policy.yaml``, run it, then write ``benchmarks/RESULTS_sweep.md`` (date,
machine, commands, composed cost, the table, the plot) and copy the plot to
``docs/img/tradeoff.png``.

    .venv/bin/python benchmarks/bench_sweep.py [--epsilons 1,3,8] [--seeds 3] [--home DIR]
        [--out benchmarks/RESULTS_sweep.md] [--no-copy]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _machine import machine, stamp  # noqa: E402

POLICY = REPO / "benchmarks" / "sweep_policy.yaml"
DEFAULT_POLICY = REPO / "policies" / "default.yaml"


def _dpgov() -> str:
    exe = Path(sys.executable).parent / "dpgov"
    return str(exe) if exe.exists() else "dpgov"


def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [_dpgov(), *args], env=env, capture_output=True, text=True, cwd=REPO, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started


def _prepare(home: Path) -> Path:
    """The bundled flchain cohort prepared into the home (its blocks registered)."""
    from dpgov.data import prepare

    out = home / "prepared" / "flchain"
    result = prepare(None, None, out=out)
    print(
        f"prepared flchain: {result.n_train} train / {result.n_test} test patients, "
        f"{len(result.blocks)} blocks",
        file=sys.stderr,
    )
    return out


def _params(home: Path, data: Path) -> Path:
    """The embedded default params with train.data pointing at the prepared cohort."""
    import yaml

    from dpgov.training.params import embedded_params_path

    params = yaml.safe_load(embedded_params_path().read_text())
    params["train"]["data"] = str(data)
    path = home / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _iv(iv: dict[str, Any] | None, digits: int = 3) -> str:
    if not iv or iv.get("mean") is None:
        return "–"
    text = f"{iv['mean']:.{digits}f}"
    if iv.get("sd") is not None:
        text += f" ± {iv['sd']:.{digits}f}"
    if iv.get("lo") is not None and iv.get("hi") is not None:
        text += f" [{iv['lo']:.{digits}f}, {iv['hi']:.{digits}f}]"
    return text


def _tables(summary: list[dict[str, Any]]) -> str:
    head = ["variant", "ε spent / trial", "σ", "seeds", "AUROC", "ECE"]
    gap_keys = [(g["attribute"], g["metric"]) for g in summary[0]["gaps"]]
    head += [f"gap {a} {m.upper()}" for a, m in gap_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        gaps = {(g["attribute"], g["metric"]): g["gap"] for g in r["gaps"]}
        cells = [
            r["variant"],
            f"{r['epsilon_spent']:.3f}" if r["epsilon_spent"] is not None else "∞",
            f"{r['noise_multiplier']:.4f}" if r["noise_multiplier"] else "–",
            str(r["seeds"]),
            _iv(r["auroc"]),
            _iv(r["calibration_error"]),
            *[_iv(gaps.get(k)) for k in gap_keys],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    sub = summary[0]["subgroups"]
    head2 = ["variant"] + [f"{s['attribute']}={s['group']} (n={s['n']})" for s in sub]
    lines += ["", "Subgroup AUROC:", "", "| " + " | ".join(head2) + " |", "|" + "---|" * len(head2)]
    for r in summary:
        by = {(s["attribute"], s["group"]): s["auroc"] for s in r["subgroups"]}
        cells = [r["variant"]] + [_iv(by.get((s["attribute"], s["group"]))) for s in sub]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cost_table(plan: dict[str, Any]) -> str:
    lines = [
        "| block | ε spent before | ε of the sweep (composed) | ε after | limit |",
        "|---|---|---|---|---|",
    ]
    for c in plan["blocks_cost"]:
        lines.append(
            f"| {c['block']} | {c['epsilon_spent']:.3f} | {c['epsilon_sweep']:.3f} | "
            f"{c['epsilon_after']:.3f} | {c['epsilon_limit']:g} |"
        )
    return "\n".join(lines)


def _price(summary: list[dict[str, Any]]) -> str:
    """Per ε: the AUROC lost against the reference and the largest widening of any gap."""
    ref = next((r for r in summary if r["epsilon"] is None), None)
    if ref is None:
        return "No reference ran: no price of privacy to report."
    ref_gaps = {(g["attribute"], g["metric"]): g["gap"]["mean"] for g in ref["gaps"]}
    lines = []
    for r in summary:
        if r["epsilon"] is None:
            continue
        drop = ref["auroc"]["mean"] - r["auroc"]["mean"]
        widening = [
            (
                g["gap"]["mean"] - ref_gaps[(g["attribute"], g["metric"])],
                g["attribute"],
                g["metric"],
            )
            for g in r["gaps"]
            if g["gap"]["mean"] is not None
            and ref_gaps.get((g["attribute"], g["metric"])) is not None
        ]
        worst = max(widening) if widening else None
        side = "below" if drop >= 0 else "above"
        text = f"- {r['variant']}: AUROC {abs(drop):.4f} {side} the reference"
        if worst is not None:
            text += f"; largest gap widening {worst[0]:+.4f} ({worst[1]} {worst[2].upper()})"
        lines.append(text + ".")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument("--seeds", default="3")
    ap.add_argument("--home", type=Path, default=None, help="a fresh folder (default: temporary)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS_sweep.md")
    ap.add_argument("--no-copy", action="store_true", help="do not copy the plot into docs/img")
    args = ap.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="dpgov-sweep-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    if any(home.iterdir()):
        print(f"error: {home} is not empty: the benchmark needs a fresh home", file=sys.stderr)
        return 2
    env = {
        **os.environ,
        "DPGOV_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("DPGOV_LEDGER_URL", None)
    os.environ.update({k: env[k] for k in ("DPGOV_HOME", "MLFLOW_TRACKING_URI")})
    os.environ.pop("DPGOV_LEDGER_URL", None)

    data = _prepare(home)
    params = _params(home, data)
    sweep = ["sweep", "--epsilons", args.epsilons, "--seeds", args.seeds, "--params", str(params)]

    # 1. the default policy cannot afford the sweep: refused, nothing charged
    refused_code, _, refused, _ = _run([*sweep, "--dry-run", "--policy", str(DEFAULT_POLICY)], env)
    print(f"default policy: exit {refused_code}: {refused.strip()}", file=sys.stderr)
    # 2. the dry run under the sweep policy
    code, out, err, _ = _run([*sweep, "--dry-run", "--json", "--policy", str(POLICY)], env)
    if code != 0:
        print(err, file=sys.stderr)
        return code
    plan = json.loads(out)
    # 3. the sweep, under the sweep policy put in force on the ledger
    code, _, err, _ = _run(["policy", "set", str(POLICY), "--reason", "sweep benchmark"], env)
    if code != 0:
        print(err, file=sys.stderr)
        return code
    command = [*sweep, "--json"]
    code, out, err, seconds = _run(command, env)
    if code != 0:
        print(err, file=sys.stderr)
        return code
    result = json.loads(out)
    print(err, file=sys.stderr)

    plot = Path(result["files"]["plot_png"])
    shown = "docs/img/tradeoff.png"
    if not args.no_copy:
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(plot, REPO / shown)
    shown_cmd = (
        f"dpgov sweep --epsilons {args.epsilons} --seeds {args.seeds} "
        "--params <home>/params.yaml (after dpgov policy set benchmarks/sweep_policy.yaml)"
    )
    trials = plan["trials"]
    sigmas = {f"{t['epsilon']:g}": t["noise_multiplier"] for t in trials}
    per_trial = ", ".join(f"ε = {e} → σ {s:.3f}" for e, s in sigmas.items())
    import torch

    text = f"""# Tradeoff study on the bundled flchain cohort (issue 9: `dpgov sweep`)

- **Date**: {stamp()}
- **Machine**: {machine()}; torch {torch.__version__}, no GPU used.
- **Command**: `.venv/bin/python benchmarks/bench_sweep.py`, which in a fresh `$DPGOV_HOME`
  prepares the bundled flchain data and runs
  `{shown_cmd}` ({seconds:.0f} s for {len(trials)} DP trials and the reference).
- **Policy**: `benchmarks/sweep_policy.yaml` = the default policy with
  `budget.epsilon_per_block: {plan["epsilon_per_block"]:g}`. The default 8.0 per block cannot
  afford this sweep; under it the sweep is refused before anything runs (exit {refused_code}):
  `{refused.strip()[:400]}`
- **Plot**: `{plot.relative_to(home) if plot.is_relative_to(home) else plot}` in the home
  folder, copied to [`{shown}`](../{shown}); the table is also saved as `summary.csv`,
  `trials.csv` and `sweep.json` there and on the MLflow parent run (artifacts `sweep/`).

## What the study cost

{len(trials)} trials (ε {args.epsilons} × {args.seeds} seeds), each on all
{len(plan["blocks"])} blocks ({plan["n_train_patients"]} training patients):
q = {plan["sample_rate"]:.4f}, T = {plan["steps"]} steps per trial, δ = {plan["delta"]:g},
{plan["accountant"].upper()}; σ calibrated for each ε on its own: {per_trial}.
Composed, the whole sweep costs **ε = {plan["epsilon_sweep"]:.3f} per block**; the trials'
ε summed would be {plan["epsilon_sum_of_trials"]:.3f}. Every block before and after (the dry
run's numbers; the ledger agrees after the run):

{_cost_table(plan)}

Cumulative ε per block after the sweep (ledger): {
        ", ".join(f"{b} {v:.3f}" for b, v in result["block_epsilon"].items())
    }. One reservation per trial, all committed; the non-private reference is not charged.
No model versions were registered (sweep trials are studies, not release candidates).

## The tradeoff

Held-out test split ({plan["n_test_patients"]} patients disjoint from training). Cells:
mean over seeds ± standard deviation over seeds [the seeds' bootstrap 95% intervals
averaged] (`n_boot` 50); the reference is one run (seed 0). Gaps: largest minus smallest
subgroup value over the judged groups (≥ 50 test patients); FNR at the test-prevalence cut-off.

{_tables(result["summary"])}

Price of privacy (mean over seeds minus the reference; positive widening = a larger gap than
the reference's):

{_price(result["summary"])}

![tradeoff](../{shown})
"""
    args.out.write_text(text)
    copied = "" if args.no_copy else f" and {shown}"
    print(f"wrote {args.out}{copied}; home {home}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
