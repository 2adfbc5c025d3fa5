"""What full adaptivity costs (issue 16): the demo's retraining waves under
``budget.composition: adaptive`` (the RDP filter, valid whatever led to each run) against
``fixed`` (tight PLD, valid only for a schedule committed in advance), on the real ledger.

The scenario is `dpgov demo --waves 3` without the training (the ledger sees only mechanisms):
the bundled flchain cohort arrives in three enrollment waves of whole blocks (1995 and 1996;
1997; 1998–2003), 80 % of each block's patients train; after each wave retraining picks every
block with at least a quarter of the target ε left (the others retire), q = 1/⌈N/512⌉ and
T = 10 epochs, σ calibrated by `Ledger.calibrate` to a run target of ε = 2 under what the
blocks already spent, reserved and committed. Under `fixed` every run is first committed as a
one-run schedule (`plan_schedule`): calibration reads only public figures (what was spent), so
the whole sequence could have been computed and committed up front. Then, with no new data,
waves continue until no block can train: the runs the budget allows.

Two budgets: the scenario's 2.6 per block, and the default policy's 8.0. The baseline of every
ratio is `fixed`, measured in the same run.

Run: .venv/bin/python benchmarks/bench_adaptivity.py
Writes benchmarks/RESULTS_adaptivity.md (merged into RESULTS.md by collect.py).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import machine, stamp

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.errors import Refused
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget

HERE = Path(__file__).resolve().parent
DELTA = 1e-5
TARGET = 2.0  # train.target_epsilon of the embedded params
FLOOR = TARGET / 4  # retraining's min_remaining
EPOCHS, BATCH = 10, 512
WAVES = [["1995", "1996"], ["1997"], ["1998-2003"]]
# patients per enrollment block of the bundled cohort (dpgov.data.flchain.load_task_table)
COHORT = {"1995": 1256, "1996": 3434, "1997": 1350, "1998-2003": 1639}
TRAIN = {b: round(n * 0.8) for b, n in COHORT.items()}
MAX_EXTRA_WAVES = 12


@dataclass
class Wave:
    index: int
    trained: list[str]
    retired: list[str]
    sigma: float | None
    epsilon_run: float | None  # the run alone, PLD
    seconds: float  # calibrate + (plan) + reserve + commit
    after: dict[str, float] = field(default_factory=dict)  # enforced ε per block


def run_scenario(mode: str, limit: float, folder: Path) -> list[Wave]:
    budget = Budget(epsilon_per_block=limit, delta=DELTA, composition=mode)  # type: ignore[arg-type]
    led = Ledger.open(f"sqlite:///{folder / f'{mode}-{limit}.db'}")
    first = 0
    waves: list[Wave] = []
    try:
        for i in range(len(WAVES) + MAX_EXTRA_WAVES):
            if i < len(WAVES):
                for b in WAVES[i]:
                    n = TRAIN[b]
                    led.add_block(
                        dataset="flchain-waves",
                        block=b,
                        patients=n,
                        members=[f"{k:020x}" for k in range(first, first + n)],
                    )
                    first += n
            status = {s.block: s for s in led.budget(budget, dataset="flchain-waves")}
            retire = [b for b, s in status.items() if not s.retired and s.remaining < FLOOR]
            for b in retire:
                led.retire_block(dataset="flchain-waves", block=b, reason="exhausted")
            train = [b for b, s in status.items() if not s.retired and b not in retire]
            if not train:
                break
            n = sum(TRAIN[b] for b in train)
            batches = math.ceil(n / BATCH)
            q, steps = 1 / batches, EPOCHS * batches
            started = time.perf_counter()
            try:
                sigma = led.calibrate(
                    dataset="flchain-waves",
                    blocks=train,
                    target_epsilon=TARGET,
                    sample_rate=q,
                    steps=steps,
                    budget=budget,
                )
            except Refused:
                break
            mech = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
            if mode == "fixed":
                led.plan_schedule(dataset="flchain-waves", blocks=train, runs=[mech], budget=budget)
            res = led.reserve(dataset="flchain-waves", blocks=train, mechanism=mech, budget=budget)
            led.commit(res.id)
            seconds = time.perf_counter() - started
            after = {s.block: s.epsilon_spent for s in led.budget(budget, dataset="flchain-waves")}
            waves.append(
                Wave(i + 1, train, retire, sigma, epsilon([mech], delta=DELTA), seconds, after)
            )
    finally:
        led.close()
    return waves


def runs_per_block(waves: list[Wave]) -> dict[str, int]:
    out = dict.fromkeys(TRAIN, 0)
    for w in waves:
        for b in w.trained:
            out[b] += 1
    return out


def table(mode: str, limit: float, waves: list[Wave]) -> list[str]:
    lines = [
        f"**{mode}**, limit {limit:g} per block",
        "",
        "| wave | trained on | retired | σ | ε run (PLD) | " + " | ".join(TRAIN) + " |",
        "|---|---|---|---|---|" + "---|" * len(TRAIN),
    ]
    for w in waves:
        cells = [f"{w.after[b]:.3f}" if b in w.after else "—" for b in TRAIN]
        lines.append(
            f"| {w.index} | {', '.join(w.trained)} | {', '.join(w.retired) or '—'} | "
            f"{w.sigma:.3f} | {w.epsilon_run:.3f} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def main() -> None:
    started = time.perf_counter()
    out: dict[tuple[str, float], list[Wave]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for limit in (2.6, 8.0):
            for mode in ("fixed", "adaptive"):
                out[(mode, limit)] = run_scenario(mode, limit, Path(tmp))
    total = time.perf_counter() - started
    lines = [
        "# What adaptivity costs: the demo's retraining waves (issue 16)",
        "",
        f"{stamp()} · {machine()} · `.venv/bin/python benchmarks/bench_adaptivity.py` "
        f"({total:.0f} s)",
        "",
        "The waves of `dpgov demo --waves 3` on the ledger alone (no training): blocks 1995 and "
        "1996, then 1997, then 1998–2003 (80 % of each block's patients train); retraining after "
        f"each wave on every block with ≥ {FLOOR:g} left, σ calibrated to a run target of "
        f"ε = {TARGET:g} under what was spent (δ = {DELTA:g}, q = 1/⌈N/512⌉, T = 10 epochs); "
        "then waves without new data until no block can train. `fixed`: tight PLD, each run "
        "committed as a schedule first (the baseline); `adaptive`: the RDP filter over the "
        "default 20 orders (the default rule). ε columns: the enforced ε of each block after "
        "the wave.",
        "",
        "| limit | rule | retraining runs | runs per block (1995, 1996, 1997, 1998-2003) | "
        "ε left after wave 1 on 1995 | σ of wave 1 | runs vs fixed |",
        "|---|---|---|---|---|---|---|",
    ]
    for limit in (2.6, 8.0):
        base = len(out[("fixed", limit)])
        for mode in ("fixed", "adaptive"):
            waves = out[(mode, limit)]
            per = runs_per_block(waves)
            left = limit - waves[0].after["1995"] if waves else limit
            lines.append(
                f"| {limit:g} | {mode} | {len(waves)} | "
                f"{', '.join(str(per[b]) for b in TRAIN)} | {left:.3f} | "
                f"{waves[0].sigma:.3f} | {len(waves) / base:.2f}× |"
            )
    slow = {
        m: max(w.seconds for lim in (2.6, 8.0) for w in out[(m, lim)])
        for m in ("fixed", "adaptive")
    }
    lines += [
        "",
        f"Slowest wave (calibrate, plan, reserve, commit): fixed {slow['fixed']:.2f} s, adaptive "
        f"{slow['adaptive']:.2f} s ({slow['adaptive'] / slow['fixed']:.2f}× the baseline).",
        "",
    ]
    for limit in (2.6, 8.0):
        for mode in ("fixed", "adaptive"):
            lines += table(mode, limit, out[(mode, limit)])
    (HERE / "RESULTS_adaptivity.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
