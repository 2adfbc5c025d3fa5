"""Sixteen processes spend the same blocks at once, on SQLite and on PostgreSQL: fourteen
training jobs calibrate and reserve through the governed reserve step and settle as jobs do
(commit, commit fewer steps, release, abort, or stay pending), while two run the whole
governed pipeline with real (tiny) DP-SGD training. Afterwards no block has spent more than
its limit, recomputed from the entries alone, and every entry verifies."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from tests.integration.reliability.helpers import (
    LEDGER_BROKEN,
    World,
    dpgov,
    recomputed_epsilon,
    replayed_charges,
    write_policy,
)
from tests.integration.reliability.zygote import Zygote

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

PROCESSES = 16
TRAINERS = 2  # of the 16, these run the whole governed pipeline
LIMIT = 1.5  # ε per block: three runs of σ = 2 fit (PLD composes them to 1.47)
ROUNDS = int(os.environ.get("DPGOV_RACE_ROUNDS", "1"))  # reservations per job: 2 × ROUNDS
BROKEN = LEDGER_BROKEN


def test_sixteen_processes_never_overspend(
    ledger_url: str, world: World, zygote: Zygote, tmp_path: Path
) -> None:
    world = dataclasses.replace(
        world,
        ledger_url=ledger_url,
        policy=write_policy(tmp_path / "contended.yaml", epsilon_per_block=LIMIT),
    )
    from dpgov.data import data_version
    from dpgov.testing.policies import put_in_force

    put_in_force(world.policy, url=ledger_url)  # the contended policy is the one in force

    meta = json.loads((world.data / "meta.json").read_text())
    meta["data_version"] = data_version(world.data)  # the DVC md5 the runs will record
    blocks = sorted(meta["blocks"])
    from dpgov.data.preparation import block_members
    from dpgov.data.prepared_data import load_prepared

    members = block_members(load_prepared(world.data).train)
    ledger = world.ledger()
    for b in blocks:  # registered as `dpgov data prepare` does: with their members
        ledger.add_block(
            dataset="synthetic",
            block=b,
            patients=int(meta["blocks"][b]),
            data_version=meta["data_version"],
            members=members[b],
            domain=meta["pseudonymisation"]["domain"],
        )

    world.validate()  # under this policy, once: both governed runs reuse it
    env = {k: v for k, v in world.env().items() if v is not None}
    go = tmp_path / "go"
    keys = []
    for i in range(PROCESSES - TRAINERS):
        # overlapping choices: pairs of adjacent blocks, then a single block
        wanted = [[blocks[i % 4], blocks[(i + 1) % 4]], [blocks[(i + 2) % 4]]] * ROUNDS
        keys.append(
            zygote.submit(
                task="reservations",
                result=tmp_path / f"job-{i}.json",
                env=env,
                ledger_url=ledger_url,
                policy=str(world.policy),
                dataset="synthetic",
                blocks=wanted,
                patients=meta["blocks"],
                data_version=meta["data_version"],
                sample_rate=0.125,
                steps=8,
                target_epsilon=1.0,
                seed=i,
                go=str(go),
                noise_multiplier=None if i % 2 else 2.0,  # half insist on σ, half calibrate
            )
        )
    for j in range(TRAINERS):
        keys.append(
            zygote.submit(
                task="governed_run",
                result=tmp_path / f"train-{j}.json",
                env=env,
                params=world.params(seed=j, noise_multiplier=3.0),
                policy=str(world.policy),
            )
        )
    # The jobs start racing while both real runs are in flight (reserved, training).
    deadline = time.monotonic() + 120
    while len(ledger.entries("reservation")) < TRAINERS and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    ended = [zygote.wait(k, timeout=600) for k in keys]

    jobs, trainers = ended[: PROCESSES - TRAINERS], ended[PROCESSES - TRAINERS :]
    for e in ended:
        assert e["exit"] == 0 and e["outcome"] is not None, e
    for e in jobs:
        assert e["outcome"]["ok"], e["outcome"]
    results = [o["result"] for e in jobs for o in e["outcome"]["outcomes"]]
    for e in trainers:  # both real runs trained and committed while the jobs raced
        assert e["outcome"]["ok"], e["outcome"]
        results.append("trained")
    assert "granted" in results and {"refused", "unaffordable"} & set(results), results

    # Nothing overspent: every block's charges, replayed from the entries and composed from
    # scratch, within the limit; what each reservation recorded too; the ledger's own figures
    # agree.
    assert ledger.verify().ok
    budget = world.budget()
    recomputed = recomputed_epsilon(ledger, budget)
    assert recomputed, "nothing was charged"
    for key, eps in recomputed.items():
        assert eps <= LIMIT * (1 + 1e-9), (key, eps)
    backend = "postgresql" if ledger.dialect == "postgresql" else "sqlite"
    counts = ", ".join(f"{r} {results.count(r)}" for r in sorted(set(results)))
    worst = max(recomputed.values()) / LIMIT
    print(
        f"\nrace {backend}: {PROCESSES} processes, {len(results)} attempts ({counts}); "
        f"largest block ε / limit {worst:.4f}"
    )  # for RESULTS_reliability.md
    for entry in ledger.entries("reservation"):
        assert all(e <= LIMIT * (1 + 1e-9) for e in entry.payload["epsilon_after"].values())
    for status in ledger.budget(budget, dataset="synthetic"):
        assert status.epsilon_spent == pytest.approx(
            recomputed.get(("synthetic", status.block), 0.0), rel=1e-6
        )
    charged = sum(len(m) for m in replayed_charges(ledger).values())
    assert charged == sum(s.charges for s in ledger.budget(budget, dataset="synthetic"))

    report = dpgov("audit", "--json", env=world.env())
    assert report.code in (0, 1), report.err
    assert not {f["kind"] for f in report.json()["findings"]} & BROKEN, report.json()["findings"]
    ledger.close()
