"""Ledger benchmarks: tightness of composition, `dpgov budget` speed, concurrent reservations,
and the cost of verified enforcement against the revision before it.

Run: .venv/bin/python benchmarks/bench_ledger.py [--charges 1000 --blocks 10 --procs 8]
     .venv/bin/python benchmarks/bench_ledger.py --only verified [--verified-charges 1000]
Writes benchmarks/RESULTS_ledger.md (merged into RESULTS.md); ``--only verified`` rewrites only
its own section of that file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, stamp

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget

REPO = Path(__file__).resolve().parents[1]
DELTA = 1e-5


def random_run(rng: random.Random) -> DpSgdMechanism:
    """A retraining run as hospitals run them: a handful of configurations, varied lengths."""
    return DpSgdMechanism(
        noise_multiplier=rng.choice([0.9, 1.0, 1.2, 1.5, 2.0]),
        sample_rate=rng.choice([0.005, 0.01, 0.02]),
        steps=rng.choice([50, 100, 200, 400]),
    )


def tightness(rng: random.Random) -> list[dict]:
    from dp_accounting import dp_event, pld

    rows = []
    for n in (3, 10, 30):
        runs = [random_run(rng) for _ in range(n)]
        ours = epsilon(runs, delta=DELTA)
        ref = pld.PLDAccountant(value_discretization_interval=5e-5)
        ref.compose(dp_event.ComposedDpEvent([r.to_dp_event() for r in runs]))
        reference = ref.get_epsilon(DELTA)
        naive = sum(epsilon([r], delta=DELTA) for r in runs)
        rdp = epsilon(runs, delta=DELTA, accountant="rdp")
        rows.append(
            {
                "runs": n,
                "dpgov_pld": ours,
                "reference_pld_5e-5": reference,
                "ratio_to_reference": ours / reference,
                "rdp": rdp,
                "naive_sum": naive,
                "ratio_to_naive": ours / naive,
            }
        )
    return rows


def budget_speed(charges: int, blocks: int, rng: random.Random) -> dict:
    from dp_accounting import dp_event, pld

    home = Path(tempfile.mkdtemp(prefix="dpgov-bench-"))
    url = f"sqlite:///{home / 'ledger.db'}"
    ledger = Ledger.open(url)
    big = Budget(epsilon_per_block=100.0, delta=DELTA)
    names = [f"block-{i:02d}" for i in range(blocks)]
    for b in names:
        ledger.add_block(dataset="bench", block=b, patients=1000)
    per_block: dict[str, list[DpSgdMechanism]] = {b: [] for b in names}
    t0 = time.perf_counter()
    for i in range(charges):
        b = names[i % blocks]
        run = random_run(rng)
        res = ledger.reserve(dataset="bench", blocks=[b], mechanism=run, budget=big)
        ledger.commit(res.id)
        per_block[b].append(run)
    fill = time.perf_counter() - t0

    env = {**os.environ, "DPGOV_LEDGER_URL": url, "DPGOV_HOME": str(home)}

    def cli_budget() -> tuple[float, dict]:
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "dpgov", "budget", "--json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return time.perf_counter() - t, json.loads(out.stdout)

    warm_times = [cli_budget()[0] for _ in range(3)]
    _, data = cli_budget()
    # cold: drop the composition cache, so every block is recomposed from its charges
    import sqlalchemy as sa

    with ledger.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dpgov_composition_cache"))
    cold, _ = cli_budget()

    t = time.perf_counter()
    reference = {}
    for b, runs in per_block.items():
        acc = pld.PLDAccountant(value_discretization_interval=2e-4)
        acc.compose(dp_event.ComposedDpEvent([r.to_dp_event() for r in runs]))
        reference[b] = acc.get_epsilon(DELTA)
    dp_alone = time.perf_counter() - t
    spent = {row["block"]: row["epsilon_spent"] for row in data["datasets"][0]["blocks"]}
    worst = max(abs(spent[b] / reference[b] - 1) for b in names)
    return {
        "charges": charges,
        "blocks": blocks,
        "fill_seconds": fill,
        "budget_cli_seconds_median": statistics.median(warm_times),
        "budget_cli_seconds_cold_cache": cold,
        "dp_accounting_alone_seconds": dp_alone,
        "max_relative_difference_to_dp_accounting": worst,
    }


def _racer(url: str, n: int, barrier, out) -> None:
    ledger = Ledger.open(url)
    budget = Budget(epsilon_per_block=100.0, delta=DELTA)
    run = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    barrier.wait()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        ledger.reserve(dataset="bench", blocks=["shared"], mechanism=run, budget=budget)
        lat.append(time.perf_counter() - t)
    out.put(lat)


def concurrency(url: str, procs: int, each: int) -> dict:
    ledger = Ledger.open(url)
    ledger.add_block(dataset="bench", block="shared", patients=1000)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs + 1), ctx.Queue()
    ps = [ctx.Process(target=_racer, args=(url, each, barrier, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    barrier.wait()
    t = time.perf_counter()
    lats = [x for _ in ps for x in out.get(timeout=600)]
    wall = time.perf_counter() - t
    for p in ps:
        p.join()
    assert ledger.verify().ok
    lats.sort()
    return {
        "processes": procs,
        "reservations": len(lats),
        "per_second": len(lats) / wall,
        "latency_p50_ms": 1000 * lats[len(lats) // 2],
        "latency_p95_ms": 1000 * lats[int(len(lats) * 0.95) - 1],
    }


# ---------------------------------------------------------------- verified enforcement
VERIFIED_HEADING = (
    "### Verified enforcement: `reserve` and `dpgov budget` against the revision before"
)

# Runs in each tree's own interpreter: open a copy of the ledger (a fresh process, so the
# current code rebuilds its verified state from every entry), then reserve on it.
_RESERVE_CHILD = """
import json, statistics, sys, time
from dpgov.accounting import DpSgdMechanism
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
url, blocks, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
budget = Budget(epsilon_per_block=100.0, delta=1e-5)
run = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=100)
t = time.perf_counter()
ledger = Ledger.open(url)
opened = time.perf_counter() - t
lat = []
for i in range(n):
    t = time.perf_counter()
    b = f"block-{i % blocks:02d}"
    ledger.reserve(dataset="bench", blocks=[b], mechanism=run, budget=budget)
    lat.append(time.perf_counter() - t)
print(json.dumps({"open": opened, "first": lat[0], "later": statistics.median(lat[1:])}))
"""


def _baseline_revision() -> str:
    """The revision before verified enforcement: the parent of the commit that added
    dpgov/ledger/verified.py (HEAD while that file is not yet committed)."""
    added = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "src/dpgov/ledger/verified.py",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return f"{added[-1]}^" if added else "HEAD"


def _tree_env(tree: Path, home: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}",
        "DPGOV_HOME": str(home),
        "DPGOV_LEDGER_URL": url,
    }


def _copy(db: Path, tmp: Path, name: str) -> str:
    target = tmp / f"{name}-{time.monotonic_ns()}.db"
    shutil.copy(db, target)
    return f"sqlite:///{target}"


def verified_cost(
    charges: int, blocks: int, rounds: int, baseline: str, rng: random.Random
) -> dict:
    """Reserve latency and `dpgov budget` of the current tree and of ``baseline``, on copies
    of one ledger (filled by the current code, so every cached state is sealed), interleaved."""
    tmp = Path(tempfile.mkdtemp(prefix="dpgov-bench-verified-"))
    db = tmp / "filled.db"
    ledger = Ledger.open(f"sqlite:///{db}")
    big = Budget(epsilon_per_block=100.0, delta=DELTA)
    names = [f"block-{i:02d}" for i in range(blocks)]
    for b in names:
        ledger.add_block(dataset="bench", block=b, patients=1000)
    for i in range(charges):
        res = ledger.reserve(
            dataset="bench", blocks=[names[i % blocks]], mechanism=random_run(rng), budget=big
        )
        ledger.commit(res.id)
    entries = len(ledger.entries())
    ledger.close()
    base = tmp / "baseline"
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", baseline],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), baseline],
        check=True,
        capture_output=True,
    )
    trees = {"baseline": base, "current": REPO}
    got: dict[tuple[str, str], list[float]] = {}
    try:
        for r in range(rounds):
            order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
            for name, tree in order:
                home = Path(tempfile.mkdtemp(dir=tmp))
                url = _copy(db, tmp, name)
                out = subprocess.run(
                    [sys.executable, "-c", _RESERVE_CHILD, url, str(blocks), "5"],
                    env=_tree_env(tree, home, url),
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                child = json.loads(out.stdout)
                for k in ("open", "first", "later"):
                    got.setdefault((k, name), []).append(child[k])
                url = _copy(db, tmp, name)
                t = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "dpgov", "budget", "--json"],
                    env=_tree_env(tree, home, url),
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                got.setdefault(("budget", name), []).append(time.perf_counter() - t)
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    return {
        "charges": charges,
        "blocks": blocks,
        "entries": entries,
        "rounds": rounds,
        "baseline": rev,
        "median": med,
    }


def verified_lines(v: dict) -> list[str]:
    m = v["median"]

    def row(label: str, key: str) -> str:
        b, c = m[(key, "baseline")], m[(key, "current")]
        return f"| {label} | {1000 * b:.0f} | {1000 * c:.0f} | {c / b:.2f} |"

    return [
        VERIFIED_HEADING,
        "",
        f"One SQLite ledger of {v['charges']} reserve + commit pairs in {v['blocks']} blocks "
        f"({v['entries']} entries), filled by the current code (every cached state sealed); "
        f"each round copies it once per tree and runs both trees in the same run, interleaved "
        f"({v['rounds']} rounds, medians). Baseline: revision {v['baseline']} (the revision "
        f"before verified enforcement, in a temporary git worktree).",
        "",
        "| measure | baseline ms | verified ms | ratio |",
        "|---|---|---|---|",
        row("`Ledger.open` of an existing ledger (no write lock taken now)", "open"),
        row("first `reserve` in a fresh process (every entry re-read and hash-checked)", "first"),
        row("later `reserve` in the same process (only new entries read)", "later"),
        row("`dpgov budget --json`, whole process", "budget"),
        "",
        "Every `reserve` also compares the projection rows it relies on with the entries under the "
        "lock (`dpgov.ledger.integrity.guard`); a first reserve on a block whose cached state "
        "carries no seal (a ledger written before seals) recomposes that block once, as with "
        "the cache dropped above; `dpgov ledger repair` seals every block at once.",
    ]


def write_verified_section(lines: list[str]) -> str:
    """Replace (or append) the verified-enforcement section of RESULTS_ledger.md."""
    path = Path(__file__).parent / "RESULTS_ledger.md"
    text = path.read_text() if path.exists() else ""
    section = "\n".join(lines) + "\n"
    pattern = re.compile(re.escape(VERIFIED_HEADING) + r".*?(?=^### |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
    return section


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--charges", type=int, default=1000)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--each", type=int, default=10)
    ap.add_argument("--only", choices=["verified"], help="run only this section")
    ap.add_argument("--verified-charges", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", default=None, help="revision before verified enforcement")
    ap.add_argument(
        "--postgres",
        default=os.environ.get(
            "DPGOV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = ap.parse_args()
    rng = random.Random(7)
    baseline = args.baseline or _baseline_revision()
    if args.only == "verified":
        v = verified_cost(args.verified_charges, args.blocks, args.rounds, baseline, rng)
        print(write_verified_section(verified_lines(v)))
        return
    tight = tightness(rng)
    speed = budget_speed(args.charges, args.blocks, rng)
    home = Path(tempfile.mkdtemp(prefix="dpgov-bench-"))
    conc = [("SQLite", concurrency(f"sqlite:///{home / 'c.db'}", args.procs, args.each))]
    try:
        import sqlalchemy as sa

        schema = f"bench_{int(time.time())}"
        eng = sa.create_engine(args.postgres)
        with eng.begin() as c:
            c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conc.append(
            (
                "PostgreSQL",
                concurrency(
                    f"{args.postgres}?options=-csearch_path%3D{schema}", args.procs, args.each
                ),
            )
        )
        with eng.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    except Exception as err:  # report, don't hide
        conc.append(("PostgreSQL", {"error": str(err).splitlines()[0]}))

    lines = [
        f"## Ledger and accounting ({stamp()})",
        "",
        f"Machine: {machine()}.",
        f"Command: `.venv/bin/python benchmarks/bench_ledger.py --charges {args.charges} "
        f"--blocks {args.blocks} --procs {args.procs} --each {args.each}`",
        "",
        "### Tightness (δ = 1e-5, random retraining histories)",
        "",
        "| runs | dpgov PLD ε | reference PLD (5e-5) | ratio (target ≤ 1.01) | RDP ε | "
        "naive sum ε | dpgov / naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in tight:
        lines.append(
            f"| {r['runs']} | {r['dpgov_pld']:.4f} | {r['reference_pld_5e-5']:.4f} | "
            f"{r['ratio_to_reference']:.4f} | {r['rdp']:.4f} | {r['naive_sum']:.3f} | "
            f"{r['ratio_to_naive']:.3f} |"
        )
    s = speed
    lines += [
        "",
        f"### `dpgov budget` over {s['charges']} charges in {s['blocks']} blocks",
        "",
        "| measure | seconds |",
        "|---|---|",
        f"| `dpgov budget --json`, whole process, cache warm (median of 3; target ≤ 2 s) "
        f"| {s['budget_cli_seconds_median']:.2f} |",
        f"| `dpgov budget --json`, cache dropped (every block recomposed) "
        f"| {s['budget_cli_seconds_cold_cache']:.2f} |",
        f"| dp_accounting PLDAccountant alone, same 10 compositions, same run "
        f"| {s['dp_accounting_alone_seconds']:.2f} |",
        f"| filling the ledger: {s['charges']} reserve + commit pairs | {s['fill_seconds']:.1f} |",
        "",
        f"Largest relative difference between the ledger's ε and dp_accounting's: "
        f"{s['max_relative_difference_to_dp_accounting']:.2e}.",
        "",
        f"### Concurrent reservations ({args.procs} processes × {args.each}, one block)",
        "",
        "| database | reservations/s | p50 latency ms | p95 latency ms |",
        "|---|---|---|---|",
    ]
    for name, c in conc:
        if "error" in c:
            lines.append(f"| {name} | not run: {c['error']} | | |")
        else:
            lines.append(
                f"| {name} | {c['per_second']:.1f} | {c['latency_p50_ms']:.0f} | "
                f"{c['latency_p95_ms']:.0f} |"
            )
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "RESULTS_ledger.md").write_text(text)
    v = verified_cost(args.verified_charges, args.blocks, args.rounds, baseline, rng)
    print(text + "\n" + write_verified_section(verified_lines(v)))


if __name__ == "__main__":
    main()
