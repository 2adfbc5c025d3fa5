"""Start-up time of `dpgov --help` and `dpgov cost`, against a baseline revision of the code.

Issue 12 moved internal imports to the top of their modules; heavy third-party packages stay
lazy, so the commands that need none of them must start as fast as before. This benchmark
checks that as a ratio: the baseline revision (default: the commit before the change) is
checked out into a temporary git worktree and both trees run the same commands with the same
interpreter, interleaved round by round, each in a fresh process with its own DPGOV_HOME.

    .venv/bin/python benchmarks/bench_startup.py [--baseline REV] [--repeats 15]

Writes benchmarks/RESULTS_startup.md (then run benchmarks/collect.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _machine import machine  # noqa: E402

COMMANDS = {
    "dpgov --help": ["--help"],
    "dpgov cost": [
        "cost",
        "--noise-multiplier",
        "1.1",
        "--sample-rate",
        "0.01",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--json",
    ],
}
TARGET = 1.10  # "as fast as today": within 10 % of the baseline's median


def _run(tree: Path, args: list[str], home: Path) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}",
        "DPGOV_HOME": str(home),
        "PYTHONDONTWRITEBYTECODE": "0",
    }
    code = f"import sys; sys.argv = ['dpgov', *{args!r}]; from dpgov.cli import run; run()"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=home, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{tree}: dpgov {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="43285b1", help="revision to compare with")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            trees = {"baseline": base, "current": REPO}
            times: dict[tuple[str, str], list[float]] = {}
            for tree in trees.values():  # warm the bytecode caches once
                for cmd in COMMANDS.values():
                    _run(tree, cmd, Path(tempfile.mkdtemp(dir=tmp)))
            for _ in range(args.repeats):
                for label, cmd in COMMANDS.items():
                    for name, tree in trees.items():
                        home = Path(tempfile.mkdtemp(dir=tmp))
                        times.setdefault((label, name), []).append(_run(tree, cmd, home))
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                capture_output=True,
            )
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"## Start-up: `dpgov --help` and `dpgov cost` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python benchmarks/bench_startup.py "
        f"--baseline {args.baseline} --repeats {args.repeats}`. Baseline: revision "
        f"{args.baseline} (before issue 12 moved internal imports to the top); current: "
        f"{head} plus the working tree. Interleaved, fresh process and DPGOV_HOME each time.",
        "",
        "| command | baseline median s | current median s | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for label in COMMANDS:
        b = statistics.median(times[(label, "baseline")])
        c = statistics.median(times[(label, "current")])
        ratio = c / b
        lines.append(
            f"| `{label}` | {b:.3f} | {c:.3f} | {ratio:.2f}× | ≤ {TARGET:.2f}× | "
            f"{'yes' if ratio <= TARGET else 'NO'} |"
        )
    text = "\n".join(lines) + "\n"
    (HERE / "RESULTS_startup.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
