"""Bounded accounting: time and peak memory of the slow and broken cases of issue 14, before
and after the bounds, and of the most expensive charges the bounds still allow.

Each case runs in its own process (`dpgov ledger reserve` on a fresh SQLite ledger, or the
audit's replay composing one block), under `/usr/bin/time` for its peak resident memory, an
address-space limit and a timeout. "After" is a copy of the checkout's src/; "before" is the
same copy with dpgov/accounting and dpgov/report/replay.py as they were in the revision before
bounded accounting (the parent of the commit that added dpgov/accounting/bounded.py, read with
`git archive`): the same ledger, CLI and audit, only the accounting differs.

Run: .venv/bin/python benchmarks/bench_accounting.py [--before-timeout 480] [--no-before]
Writes benchmarks/RESULTS_accounting.md (merged into RESULTS.md by collect.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, stamp

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "RESULTS_accounting.md"
TIME = Path("/usr/bin/time")
GiB = 1024**3

POLICY = """version: 1
budget:
  epsilon_per_block: {limit}
  delta: 1.0e-5
  accountant: pld
"""

REPLAY = """
import sys
from dpgov.report.replay import compose_epsilon
sigma, q, steps = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
try:
    print(f"composed, ε={compose_epsilon(((sigma, q, 'add_remove', steps),), 1e-5, 'pld'):.4g}")
except Exception as err:  # what the audit reports as epsilon_uncomputable
    sys.exit(f"error: {type(err).__name__}: {err}")
"""


@dataclass(frozen=True)
class Case:
    label: str
    kind: str  # "reserve" | "replay"
    sigma: str
    q: str
    steps: str
    before: bool = True  # also measured on the revision before (slow there)
    limit: float = 8.0
    before_timeout: float | None = None  # default: --before-timeout


CASES = [
    Case("σ=0.02, q=1e-7, T=1 (ε ≈ 0)", "reserve", "0.02", "1e-7", "1"),
    Case("σ=0.01, q=1e-8, T=1", "reserve", "0.01", "1e-8", "1"),
    Case("σ=100, q=1e-9, T=1e9", "reserve", "100", "1e-9", "1000000000", before_timeout=180),
    Case("σ=1e-300, q=0.01, T=1", "reserve", "1e-300", "0.01", "1"),
    Case("σ=1e308, q=0.01, T=1", "reserve", "1e308", "0.01", "1"),
    Case("σ=1, q=1e-320, T=1", "reserve", "1", "1e-320", "1"),
    Case("σ=0.5, q=1, T=1e9", "reserve", "0.5", "1", "1000000000"),
    Case("σ=1e-9, q=0.01, T=100 (params' 1e-9)", "reserve", "1e-9", "0.01", "100"),
    Case("audit replay of a block charged σ=0.02, q=1e-7, T=1", "replay", "0.02", "1e-7", "1"),
    Case("typical: σ=1, q=0.01, T=1000", "reserve", "1.0", "0.01", "1000"),
    # the most expensive charges the bounds allow (a step of ~1M points, a composition of
    # ~8M): refused by the block limit only after composing, the worst a charge may cost
    Case(
        "largest step and composition: σ=0.0791, q=0.01, T=154",
        "reserve",
        "0.0791475543941116",
        "0.01",
        "154",
        before=False,
        limit=100.0,
    ),
    Case(
        "largest composition: σ=0.135, q=1, T=165",
        "reserve",
        "0.1348598935389008",
        "1",
        "165",
        before=False,
        limit=100.0,
    ),
    Case(
        "largest composition: σ=0.5, q=1, T=2264",
        "reserve",
        "0.5",
        "1",
        "2264",
        before=False,
        limit=100.0,
    ),
]


def snapshot(into: Path) -> Path:
    """The checkout's src/ as it is now (the after tree), copied so that edits made while the
    benchmark runs do not change what it measures."""
    shutil.copytree(REPO / "src", into / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return into


def with_accounting_of(rev: str, tree: Path, into: Path) -> Path:
    """``tree`` with dpgov/accounting and the audit's replay as they were at ``rev`` (read
    from git without a checkout): the same ledger, CLI and audit, only the accounting
    before its bounds."""
    shutil.copytree(tree / "src", into / "src")
    shutil.rmtree(into / "src" / "dpgov" / "accounting")
    paths = ["src/dpgov/accounting", "src/dpgov/report/replay.py"]
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, *paths],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def before_revision() -> str:
    added = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "src/dpgov/accounting/bounded.py",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("dpgov/accounting/bounded.py is not committed yet: nothing to compare")
    return f"{added[-1]}^"


def short(rev: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants now, in MB (Linux /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += (
                next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS"))
                / 1024
            )
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, StopIteration, ValueError):
            continue
        todo.extend(int(c) for c in children)
    return total


def run_case(case: Case, tree: Path, tmp: Path, timeout: float, mem_limit: int) -> dict:
    home = Path(tempfile.mkdtemp(dir=tmp))
    db = home / "ledger.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "src"),
        "DPGOV_HOME": str(home),
        "HOME": str(home),
        "DPGOV_LEDGER_URL": f"sqlite:///{db}",
    }
    policy = home / "policy.yaml"
    policy.write_text(POLICY.format(limit=case.limit))
    py = [sys.executable]
    if case.kind == "reserve":
        subprocess.run(
            [
                *py,
                "-m",
                "dpgov",
                "ledger",
                "add-block",
                "--dataset",
                "c",
                "--block",
                "b",
                "--patients",
                "1000",
            ],
            env=env,
            capture_output=True,
            check=True,
            cwd=home,
        )
        in_force = (tree / "src" / "dpgov" / "cli" / "policy.py").exists()
        if in_force:  # the case's policy in force on the ledger (reserve takes no --policy)
            subprocess.run(
                [*py, "-m", "dpgov", "policy", "set", str(policy), "--reason", "benchmark case"],
                env=env,
                capture_output=True,
                check=True,
                cwd=home,
            )
        cmd = [
            *py,
            "-m",
            "dpgov",
            "ledger",
            "reserve",
            "--dataset",
            "c",
            "--block",
            "b",
            "--noise-multiplier",
            case.sigma,
            "--sample-rate",
            case.q,
            "--steps",
            case.steps,
            *([] if in_force else ["--policy", str(policy)]),  # a revision before issue 13
        ]
    else:
        cmd = [*py, "-c", REPLAY, case.sigma, case.q, case.steps]
    stats = home / "time.txt"
    if TIME.exists():
        cmd = [str(TIME), "-f", "%e %M", "-o", str(stats), *cmd]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))

    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
        cwd=home,
        start_new_session=True,  # its own process group: a timeout stops all of it
    )
    sampled = 0.0  # peak resident MB seen while it runs (for a case that is stopped)
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            sampled = max(sampled, tree_rss_mb(proc.pid))
            if time.perf_counter() - t > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                shutil.rmtree(home, ignore_errors=True)
                return {
                    "seconds": timeout,
                    "peak_mb": sampled or None,
                    "outcome": f"stopped after {timeout:g} s, still running",
                }
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    seconds = time.perf_counter() - t
    peak = None
    if stats.exists():
        parts = stats.read_text().split()
        if len(parts) >= 2:
            seconds, peak = float(parts[-2]), int(parts[-1]) / 1024
    err = [ln.strip() for ln in out.stderr.splitlines() if ln.strip()]
    said = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    if "Traceback" in out.stderr:
        error = next((ln for ln in reversed(err) if "Error" in ln), err[-1])
        outcome = f"exit {out.returncode}, traceback: {error[:100]}"
    elif out.returncode == 0:
        last = said[-1] if said else ""
        outcome = "granted, " + last[last.find("ε_run") :] if "ε_run" in last else last
    else:
        last = err[-1].removeprefix("error: ") if err else ""
        outcome = f"exit {out.returncode}, {len(err)} line: {last[:120]}…"
    shutil.rmtree(home, ignore_errors=True)
    return {"seconds": seconds, "peak_mb": peak, "outcome": outcome}


def fmt(r: dict | None) -> str:
    if r is None:
        return "—"
    peak = "?" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f} MB"
    if r["outcome"].startswith("stopped") and r["peak_mb"] is not None:
        peak = f"≥ {peak} (when stopped)"
    return f"{r['seconds']:.1f} s, {peak}: {r['outcome']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before-timeout", type=float, default=480.0)
    ap.add_argument("--after-timeout", type=float, default=120.0)
    ap.add_argument("--before-memory-gb", type=float, default=10.0)
    ap.add_argument("--after-memory-gb", type=float, default=4.0)
    ap.add_argument("--no-before", action="store_true", help="measure HEAD only")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dpgov-bench-accounting-"))
    try:
        after_rev = "HEAD"
        after = snapshot(tmp / "after")
        before_rev = None if args.no_before else before_revision()
        before = None
        if before_rev is not None:
            before = with_accounting_of(before_rev, after, tmp / "before")
        rows = []
        for case in CASES:
            print(f"{case.label} …", flush=True)
            a = run_case(case, after, tmp, args.after_timeout, int(args.after_memory_gb * GiB))
            b = None
            if before is not None and case.before:
                b = run_case(
                    case,
                    before,
                    tmp,
                    case.before_timeout or args.before_timeout,
                    int(args.before_memory_gb * GiB),
                )
            print(f"  before {fmt(b)}\n  after  {fmt(a)}", flush=True)
            rows.append((case, b, a))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    worst = max((a for c, _, a in rows), key=lambda a: a["seconds"])
    worst_mem = max((a["peak_mb"] or 0) for _, _, a in rows)
    lines = [
        "## Bounded accounting: the slow cases of issue 14, before and after",
        "",
        f"{stamp()} · {machine()} · `.venv/bin/python benchmarks/bench_accounting.py` · "
        f"after: the checkout at {short(after_rev)}; before: the same with the accounting of "
        f"{short(before_rev) if before_rev else '(not measured)'}, the revision before "
        f"bounded accounting.",
        "",
        "Each case is one process: `dpgov ledger reserve` on a fresh SQLite ledger (block limit "
        "ε = 8, δ = 1e-5, pld; the last three at the largest limit a policy allows, ε = 100), "
        "or the audit's replay composing one block (`dpgov.report.replay.compose_epsilon`). "
        "Wall time and peak resident memory from `/usr/bin/time`; before: at most "
        f"{args.before_timeout:g} s and {args.before_memory_gb:g} GB of address space; after: "
        f"{args.after_timeout:g} s and {args.after_memory_gb:g} GB.",
        "",
        "| case | before | after |",
        "|---|---|---|",
    ]
    for case, b, a in rows:
        lines.append(f"| {case.label} | {fmt(b)} | {fmt(a)} |")
    lines += [
        "",
        f"Target: no single charge needs more than 2 GB or 60 s of accounting. Slowest case "
        f"after: {worst['seconds']:.1f} s; largest peak after: {worst_mem:,.0f} MB "
        f"(`dpgov.accounting.bounded`: one step ≤ 1,000,000 points, any composition ≤ "
        f"8,000,000, PRV ≤ 6,000,000 mesh points). The three `largest` rows are the most "
        f"expensive charges the bounds still compose (then refused by the block limit); times "
        f"include starting Python and dpgov (about 1 s).",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
