"""Per-patient accounting at scale (issue 15): 1,000,000 patients of one domain in 50 blocks
over 4 groupings of the same patients (the first grouping one block of every patient, then 3
regroupings into 9, 15 and 25 blocks, each an even cut of the patients in arrival order, so the
cuts do not align), 200 charges (reserve + commit) on 1 to 3 blocks of one grouping each.

Measured, each phase in its own process (peak memory is that process's maximum RSS):
- registering the 1,000,000-member block, and all 50 blocks (target: the big block <= 30 s);
- the 200 charges (each reservation's time; target: one reservation <= 1 s; each commit's time
  too: under the adaptive rule a run's close composes the accountant's figure of its classes),
  then one more reservation in a fresh process (state rebuilt from the entries first);
- `dpgov budget --json` and `dpgov budget --patients --json` as the user runs them (target
  <= 2 s), and `dpgov budget --json` while one run on the block of every patient is pending
  (its classes' accountant figures not yet sealed: composed by the read); peak memory of every
  phase (target <= 1 GB).
The baseline, in the same run: the same blocks registered without members (the block-only
ledger: `Ledger.add_block` without members, as every ledger before issue 15), the same charges.
Under per-patient accounting such blocks are conservative (every charge of the domain reaches
them), so the baseline's figures are larger, never smaller.

Run: .venv/bin/python benchmarks/bench_patients.py [--quick]
Writes benchmarks/RESULTS_patients.md (merged into RESULTS.md by collect.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, stamp

REPO = Path(__file__).resolve().parents[1]
DELTA = 1e-5
LIMIT = 100.0  # the policy schema's largest ε per block: no charge here is refused
GROUPINGS = [1, 9, 15, 25]  # 50 blocks: one block of everyone, then 3 regroupings
DOMAIN = "mrn@bench"
LOAD = os.getloadavg()


def pseudonyms(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pseudonyms (20 hex digits), in 'arrival order'."""
    import numpy as np

    raw = np.random.default_rng(seed).bytes(10 * n).hex()
    out = [raw[i : i + 20] for i in range(0, len(raw), 20)]
    if len(set(out)) != n:  # 80 bits: never in practice
        raise SystemExit("pseudonym collision: change the seed")
    return out


def layout(n: int) -> list[tuple[str, str, int, int]]:
    """(dataset, block, start, stop) of every block: grouping g cuts [0, n) evenly."""
    out = []
    for g, k in enumerate(GROUPINGS):
        cuts = [round(i * n / k) for i in range(k + 1)]
        for b in range(k):
            out.append((f"cohort-g{g}", f"b{b:02d}", cuts[b], cuts[b + 1]))
    return out


def charges(seed: int = 1, count: int = 200) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        g = rng.randrange(len(GROUPINGS))
        k = GROUPINGS[g]
        blocks = sorted(rng.sample(range(k), min(k, rng.choice([1, 1, 2, 3]))))
        out.append(
            {
                "dataset": f"cohort-g{g}",
                "blocks": [f"b{b:02d}" for b in blocks],
                "sigma": rng.choice([1.0, 1.5, 2.0]),
                "q": rng.choice([0.001, 0.002]),
                "steps": rng.choice([100, 200, 400]),
            }
        )
    return out


def _budget() -> Any:
    from dpgov.policy.schema import Budget

    return Budget(epsilon_per_block=LIMIT, delta=DELTA)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- phases (children)


def phase_register(url: str, n: int, members: bool) -> dict[str, Any]:
    from dpgov.ledger import Ledger

    ids = pseudonyms(n)
    led = Ledger.open(url)
    if members:
        led.pseudonym_key("0" * 64)
    times = []
    for ds, block, lo, hi in layout(n):
        chunk = ids[lo:hi]
        t0 = time.perf_counter()
        if members:
            led.add_block(
                dataset=ds, block=block, patients=len(chunk), members=chunk, domain=DOMAIN
            )
        else:
            led.add_block(dataset=ds, block=block, patients=len(chunk))
        times.append((ds, block, len(chunk), time.perf_counter() - t0))
    led.close()
    big = max(times, key=lambda t: t[2])
    return {
        "blocks": len(times),
        "largest_block_members": big[2],
        "largest_block_s": big[3],
        "all_blocks_s": sum(t[3] for t in times),
        "peak_mb": _peak_mb(),
    }


def phase_charge(url: str) -> dict[str, Any]:
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger

    led = Ledger.open(url)
    budget = _budget()
    times, commits = [], []
    for i, c in enumerate(charges()):
        mech = DpSgdMechanism(noise_multiplier=c["sigma"], sample_rate=c["q"], steps=c["steps"])
        t0 = time.perf_counter()
        res = led.reserve(
            dataset=c["dataset"], blocks=c["blocks"], mechanism=mech, budget=budget, run_id=f"r{i}"
        )
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        led.commit(res.id)
        commits.append(time.perf_counter() - t0)
    led.close()
    rest = times[1:]  # the first pays for the imports and the state's first build
    return {
        "charges": len(times),
        "reserve_median_s": statistics.median(times),
        "reserve_max_s": max(rest),
        "reserve_max_at": 1 + rest.index(max(rest)),
        "reserve_p95_s": statistics.quantiles(rest, n=20)[-1],
        "reserve_first_s": times[0],
        "reserve_last_s": times[-1],
        "commit_median_s": statistics.median(commits),
        "commit_p95_s": statistics.quantiles(commits, n=20)[-1],
        "commit_max_s": max(commits),
        "peak_mb": _peak_mb(),
    }


def phase_one_more(url: str) -> dict[str, Any]:
    """One more reservation in a fresh process: open, rebuild the state, reserve, release."""
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger

    t = time.perf_counter()
    import dp_accounting  # noqa: F401  (the accounting library: once per process, timed apart)

    import_s = time.perf_counter() - t
    t0 = time.perf_counter()
    led = Ledger.open(url)
    mech = DpSgdMechanism(noise_multiplier=4.0, sample_rate=0.001, steps=100)
    t1 = time.perf_counter()
    res = led.reserve(dataset="cohort-g3", blocks=["b07", "b08"], mechanism=mech, budget=_budget())
    t2 = time.perf_counter()
    res2 = led.reserve(dataset="cohort-g2", blocks=["b03"], mechanism=mech, budget=_budget())
    t3 = time.perf_counter()
    led.release(res.id)
    led.release(res2.id)
    led.close()
    return {
        "import_s": import_s,
        "open_s": t1 - t0,
        "fresh_reserve_s": t2 - t1,
        "next_reserve_s": t3 - t2,
        "peak_mb": _peak_mb(),
    }


PENDING = {"dataset": "cohort-g0", "blocks": ["b00"]}  # the block of every patient


def phase_pend(url: str) -> dict[str, Any]:
    """Reserve one run on the block of every patient and leave it pending."""
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger

    led = Ledger.open(url)
    mech = DpSgdMechanism(noise_multiplier=4.0, sample_rate=0.001, steps=100)
    res = led.reserve(**PENDING, mechanism=mech, budget=_budget(), run_id="pending")
    led.close()
    return {"reservation": res.id, "peak_mb": _peak_mb()}


def phase_release(url: str, reservation: str) -> dict[str, Any]:
    from dpgov.ledger import Ledger

    led = Ledger.open(url)
    t0 = time.perf_counter()
    led.release(reservation)
    out = {"release_s": time.perf_counter() - t0, "peak_mb": _peak_mb()}
    led.close()
    return out


# --------------------------------------------------------------------------- orchestration


def _child(phase: str, url: str, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--url", url, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cli(url: str, home: Path, *args: str) -> tuple[float, float]:
    """Wall time and peak RSS (MB) of one `dpgov ...` command, as a user runs it."""
    env = {**os.environ, "DPGOV_LEDGER_URL": url, "DPGOV_HOME": str(home)}
    code = (
        "import resource, sys, time\n"
        "from dpgov.cli import main\n"
        f"sys.argv = ['dpgov', *{list(args)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " file=sys.stderr)\n"
        "sys.exit(code or 0)\n"
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"dpgov {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    peak = float(out.stderr.rsplit("PEAK", 1)[1].split()[0])
    return wall, peak


def _profile_budget(url: str, home: Path) -> list[dict[str, Any]]:
    """Where `dpgov budget --json` spends its time: dpgov's functions by cumulative time."""
    env = {**os.environ, "DPGOV_LEDGER_URL": url, "DPGOV_HOME": str(home)}
    code = (
        "import cProfile, json, pstats, sys\n"
        "from dpgov.cli import main\n"
        "sys.argv = ['dpgov', 'budget', '--json']\n"
        "pr = cProfile.Profile(); pr.enable()\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "pr.disable()\n"
        "rows = [(f'{k[0].split(\"/src/\")[-1]}:{k[1]}({k[2]})', v[1], v[3])\n"
        "        for k, v in pstats.Stats(pr).stats.items() if '/src/dpgov/' in k[0]]\n"
        "rows.sort(key=lambda r: -r[2])\n"
        "print(json.dumps([{'function': f, 'calls': c, 'cumulative_s': t}"
        " for f, c, t in rows[:12]]), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    return json.loads(out.stderr.strip().splitlines()[-1])


def run_ledger(n: int, members: bool, rounds: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="dpgov-bench-patients-"))
    url = f"sqlite:///{home / 'ledger.db'}"
    reg = _child("register", url, "--patients", str(n), *(["--members"] if members else []))
    chg = _child("charge", url)
    more = _child("one-more", url)
    budget_runs = [_cli(url, home, "budget", "--json") for _ in range(rounds)]
    out: dict[str, Any] = {"register": reg, "charge": chg, "one_more": more}
    out["budget_s"] = statistics.median(w for w, _ in budget_runs)
    out["budget_peak_mb"] = max(p for _, p in budget_runs)
    pend = _child("pend", url)
    pending_runs = [_cli(url, home, "budget", "--json") for _ in range(rounds)]
    out["budget_pending_s"] = statistics.median(w for w, _ in pending_runs)
    out["release"] = _child("release", url, "--id", pend["reservation"])
    if members:
        pat = [_cli(url, home, "budget", "--patients", "--json") for _ in range(rounds)]
        out["budget_patients_s"] = statistics.median(w for w, _ in pat)
        out["budget_patients_peak_mb"] = max(p for _, p in pat)
        env = {**os.environ, "DPGOV_LEDGER_URL": url, "DPGOV_HOME": str(home)}
        text = subprocess.run(
            [sys.executable, "-m", "dpgov", "budget", "--patients", "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=True,
        ).stdout
        dom = json.loads(text)["domains"]
        out["classes"] = sum(d["classes"] for d in dom)
        out["epsilon_max"] = max(d["epsilon_max"] for d in dom)
        out["epsilon_median"] = dom[0]["epsilon_median"] if dom else None
        out["budget_profile"] = _profile_budget(url, home)
    out["peak_mb"] = max(
        reg["peak_mb"], chg["peak_mb"], more["peak_mb"], out["budget_peak_mb"],
        out.get("budget_patients_peak_mb", 0.0), max(p for _, p in pending_runs),
    )  # fmt: skip
    out["ledger_mb"] = (home / "ledger.db").stat().st_size / 2**20
    return out


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "—"


def _ok(value: float, target: float) -> str:
    return "met" if value <= target else "**missed**"


def write_results(n: int, new: dict[str, Any], old: dict[str, Any], quick: bool) -> Path:
    scale = 1_000_000 / n
    rows = [
        (
            f"register the {new['register']['largest_block_members']:,}-member block",
            new["register"]["largest_block_s"],
            old["register"]["largest_block_s"],
            30.0 / scale if quick else 30.0,
        ),
        ("register all 50 blocks", new["register"]["all_blocks_s"],
         old["register"]["all_blocks_s"], None),
        ("reservation, median of 200 (s)", new["charge"]["reserve_median_s"],
         old["charge"]["reserve_median_s"], 1.0),
        ("reservation, 95th percentile after the first (s)", new["charge"]["reserve_p95_s"],
         old["charge"]["reserve_p95_s"], 1.0),
        ("reservation, slowest after the first (s)", new["charge"]["reserve_max_s"],
         old["charge"]["reserve_max_s"], 1.0),
        ("commit, median of 200 (s)", new["charge"]["commit_median_s"],
         old["charge"]["commit_median_s"], None),
        ("commit, 95th percentile (s)", new["charge"]["commit_p95_s"],
         old["charge"]["commit_p95_s"], None),
        ("commit, slowest (s)", new["charge"]["commit_max_s"], old["charge"]["commit_max_s"],
         None),
        ("the first of the 200 (imports, first state build) (s)",
         new["charge"]["reserve_first_s"], old["charge"]["reserve_first_s"], None),
        ("importing dp_accounting in a fresh process (s)", new["one_more"]["import_s"],
         old["one_more"]["import_s"], None),
        ("opening the ledger in a fresh process (s)", new["one_more"]["open_s"],
         old["one_more"]["open_s"], None),
        ("one reservation in a fresh process, after those (s)",
         new["one_more"]["fresh_reserve_s"], old["one_more"]["fresh_reserve_s"], 1.0),
        ("the next reservation (s)", new["one_more"]["next_reserve_s"],
         old["one_more"]["next_reserve_s"], 1.0),
        ("`dpgov budget --json` (s, wall, as run)", new["budget_s"], old["budget_s"], 2.0),
        ("`dpgov budget --json`, one run pending on every patient (s)",
         new["budget_pending_s"], old["budget_pending_s"], None),
        ("releasing that run (s)", new["release"]["release_s"], old["release"]["release_s"],
         None),
        ("peak memory of any phase (MB)", new["peak_mb"], old["peak_mb"], 1024.0),
    ]  # fmt: skip
    lines = [
        "# Per-patient accounting (issue 15)",
        "",
        f"{stamp()} · {machine()} · `benchmarks/bench_patients.py{' --quick' if quick else ''}`",
        "",
        f"Load average (1 min) at the start and the end of the run: {LOAD[0]:.1f}, "
        f"{os.getloadavg()[0]:.1f} (the machine was {'shared' if LOAD[0] > 1.5 else 'quiet'}).",
        "",
        f"{n:,} patients of one domain; 50 blocks in 4 groupings of the same patients (1, 9, 15 "
        "and 25 blocks, even cuts in arrival order); 200 charges (reserve + commit) on 1-3 "
        "blocks of one grouping each; SQLite ledger in a temporary folder. Each phase runs in "
        "its own process; peak memory is its maximum RSS. Baseline in the same run: the same "
        "blocks registered without members (the block-only ledger), the same charges.",
        "",
        "| measure | per patient | block-only baseline | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, a, b, target in rows:
        tgt = "—" if target is None else f"≤ {target:g}: {_ok(a, target)}"
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {_ratio(a, b)} | {tgt} |")
    lines += [
        "",
        f"- `dpgov budget --patients --json`: {new['budget_patients_s']:.3f} s (target ≤ 2 s: "
        f"{_ok(new['budget_patients_s'], 2.0)}), peak {new['budget_patients_peak_mb']:.0f} MB; "
        f"{new['classes']} history classes; per-patient ε median "
        f"{new['epsilon_median']:.3f}, max {new['epsilon_max']:.3f} at δ={DELTA:g}.",
        f"- The slowest reservation after the first is charge {new['charge']['reserve_max_at']}"
        f" of 200 (block-only: {old['charge']['reserve_max_at']}).",
        f"- Ledger file: {new['ledger_mb']:.1f} MB with members, {old['ledger_mb']:.1f} MB "
        "without.",
        "- The block-only baseline's blocks are conservative under per-patient accounting "
        "(each composes every charge of its domain), so its ε figures are larger; its times "
        "are those of the ledger without membership.",
    ]
    lines += [
        "",
        "Where `dpgov budget --json` spends its time on the per-patient ledger (cProfile, "
        "dpgov's functions by cumulative time, one run):",
        "",
        "| function | calls | cumulative s |",
        "|---|---:|---:|",
    ]
    for row in new.get("budget_profile", []):
        lines.append(f"| `{row['function']}` | {row['calls']} | {row['cumulative_s']:.2f} |")
    if quick:
        lines.append(f"- `--quick`: {n:,} patients; the registration target is scaled to the size.")
    path = Path(__file__).resolve().parent / "RESULTS_patients.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 patients, 1 round")
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--phase", choices=["register", "charge", "one-more", "pend", "release"], default=None
    )
    ap.add_argument("--id", default=None, help="the reservation to release (--phase release)")
    ap.add_argument("--url", default=None)
    ap.add_argument("--members", action="store_true")
    args = ap.parse_args()
    if args.phase:
        if args.phase == "register":
            out = phase_register(args.url, args.patients, args.members)
        elif args.phase == "charge":
            out = phase_charge(args.url)
        elif args.phase == "pend":
            out = phase_pend(args.url)
        elif args.phase == "release":
            out = phase_release(args.url, args.id)
        else:
            out = phase_one_more(args.url)
        print(json.dumps(out))
        return
    n = args.patients or (20_000 if args.quick else 1_000_000)
    rounds = 1 if args.quick else args.rounds
    new = run_ledger(n, True, rounds)
    print(json.dumps({"per_patient": new}, indent=1))
    old = run_ledger(n, False, rounds)
    print(json.dumps({"block_only": old}, indent=1))
    print(f"wrote {write_results(n, new, old, args.quick)}")


if __name__ == "__main__":
    main()
