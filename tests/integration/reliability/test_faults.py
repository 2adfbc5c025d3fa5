"""Faults injected at exact points of a governed run, and what the system does about them.

A training process is killed outright (SIGKILL: no handler, no cleanup) before its reservation,
during training, between training and commit, and during tracking (before and after its model
version is registered); the ledger database stops answering at the moment of reserving; the
tracking store is unreachable. After each: the ledger still verifies, every block is charged
at least what ran (a pending reservation counts as spent), ``dpgov audit`` says what happened,
and no model version of a killed run holds or can get the release alias.

The points are the test-only hook ``dpgov.training.faults.fault_point`` (``DPGOV_FAULT``);
the processes are forked from one zygote that imported the training stack once.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.reliability.helpers import (
    LEDGER_BROKEN,
    RELEASE_BROKEN,
    World,
    dpgov,
    enforced_epsilon,
    environment,
    recomputed_epsilon,
    replayed_charges,
)
from tests.integration.reliability.netfault import TcpProxy
from tests.integration.reliability.zygote import Zygote

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

MODEL = "rel-model"
PLANNED_STEPS = 8  # 480 training patients, batch 64: q = 1/8, 8 steps in one epoch
BROKEN = LEDGER_BROKEN | RELEASE_BROKEN


def _env(env: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in env.items() if v is not None}


def _audit(world: World, **env: str | None) -> dict[str, Any]:
    """``dpgov audit --json`` (pending reservations are findings at once)."""
    r = dpgov("audit", "--json", "--stale-hours", "0", env=world.env(**env))
    assert r.code in (0, 1), r.err
    return r.json()


def _versions(world: World) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=world.tracking_uri, registry_uri=world.tracking_uri)
    return list(client.search_model_versions(f"name = '{MODEL}'"))


def _runs(world: World) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=world.tracking_uri)
    exp = client.get_experiment_by_name("rel")
    return [] if exp is None else list(client.search_runs([exp.experiment_id]))


def _approve_as_alice(world: World, version: str) -> None:
    """Alice approves as herself: who acts is the OS user (dpgov.identity), here alice; the
    run was trained (and bound as its author) by this process's user."""
    from dpgov.gate.approvals import record_approval
    from dpgov.gate.in_force import policy_in_force
    from dpgov.ledger import Ledger
    from dpgov.tracking.registry import Registry

    with environment(world.env()), pytest.MonkeyPatch.context() as mp:
        mp.setattr("dpgov.identity.os_user", lambda: "alice")
        ledger = Ledger.open(world.ledger_url)
        try:
            record_approval(
                model=MODEL,
                version=version,
                by="alice",
                note="",
                policy=policy_in_force(ledger),
                ledger=ledger,
                registry=Registry(world.tracking_uri),
            )
        finally:
            ledger.close()


# (point, optimizer steps the process had taken when it died, reservation state it leaves)
KILLS = [
    ("before_reserve", 0, None),
    ("during_train", 2, "pending"),
    ("after_train", PLANNED_STEPS, "pending"),
    ("during_track", PLANNED_STEPS, "committed"),
    ("after_register", PLANNED_STEPS, "committed"),
]


@pytest.mark.parametrize(("point", "steps_ran", "state"), KILLS, ids=[k[0] for k in KILLS])
def test_killed_run(
    point: str, steps_ran: int, state: str | None, world: World, zygote: Zygote, tmp_path: Path
) -> None:
    ended = zygote.run(
        params=world.params(),
        policy=world.policy,
        result=tmp_path / "outcome.json",
        env=_env(world.env(DPGOV_FAULT=point)),
    )
    assert ended["signal"] == signal.SIGKILL and ended["outcome"] is None, ended

    # The ledger still verifies.
    verify = dpgov("ledger", "verify", "--json", env=world.env())
    assert verify.code == 0 and verify.json()["ok"], verify.err

    ledger, budget = world.ledger(), world.budget()
    reservations = ledger.reservations()
    if state is None:  # killed before reserving: nothing charged, no run started
        assert reservations == [] and replayed_charges(ledger) == {}
        assert _runs(world) == []
    else:
        [res] = reservations
        assert res.status == state
        ran = enforced_epsilon([res.mechanism.with_steps(steps_ran)], budget)
        charged = recomputed_epsilon(ledger, budget)
        shown = {
            b["block"]: b
            for b in dpgov("budget", "--json", env=world.env()).json()["datasets"][0]["blocks"]
        }
        for block in res.blocks:
            # at least what ran, as recomputed from the entries and as `dpgov budget` shows it
            assert charged[("synthetic", block)] >= ran * (1 - 1e-9)
            assert shown[block]["epsilon_spent"] == pytest.approx(charged[("synthetic", block)])
            assert shown[block]["pending"] == (1 if state == "pending" else 0)
        if state == "pending":  # the whole plan stays charged, not just the steps taken
            assert res.mechanism.steps == PLANNED_STEPS

    # The audit says what happened.
    report = _audit(world)
    kinds = {f["kind"] for f in report["findings"]}
    assert not kinds & BROKEN, report["findings"]
    if state == "pending":
        [pending] = [f for f in report["findings"] if f["kind"] == "reservation_pending"]
        assert pending["reservation"] == res.id and "crashed run" in pending["detail"]
    if state == "committed":  # charged exactly what ran; the MLflow run never ended
        [row] = [r for r in report["runs"] if r["reservation"] == res.id]
        assert row["status"] == "committed" and row["mechanism"]["steps"] == steps_ran
        assert row["mlflow_status"] == "RUNNING"

    # No model version of the killed run holds or can get the release alias.
    versions = _versions(world)
    assert all(not v.aliases for v in versions)
    if point == "after_register":
        [version] = versions
        assert version.run_id == row["mlflow_run"]
        _approve_as_alice(world, version.version)
        promote = dpgov("promote", MODEL, version.version, "--json", env=world.env())
        assert promote.code == 1 and "run_finished" in promote.err, promote.err
        assert all(not v.aliases for v in _versions(world))
    else:
        assert versions == []

    if state == "pending":  # settling the crashed run keeps it charged
        before = recomputed_epsilon(ledger, budget)
        settle = dpgov("ledger", "abort", res.id, "--reason", f"killed at {point}", env=world.env())
        assert settle.code == 0, settle.err
        assert recomputed_epsilon(ledger, budget) == before
        assert ledger.verify().ok
        report = _audit(world)
        assert "reservation_pending" not in {f["kind"] for f in report["findings"]}
        assert [r["reservation"] for r in report["reservations"]["aborted"]] == [res.id]
    ledger.close()


@pytest.mark.postgres
def test_ledger_unreachable_when_reserving(
    world: World, zygote: Zygote, postgres_url: str, tmp_path: Path
) -> None:
    """The ledger database stops answering exactly when the run reserves: the run must not
    start (exit 2, no MLflow run, no step), and nothing is charged."""
    from sqlalchemy.engine import make_url

    from dpgov.testing.policies import put_in_force

    put_in_force(world.policy, url=postgres_url)  # the world's policy, in force on this ledger
    target = make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    pause = tmp_path / "pause"
    pause.mkdir()
    try:
        zygote.submit(
            params=world.params(),
            policy=world.policy,
            result=tmp_path / "outcome.json",
            env=_env(
                world.env(
                    DPGOV_LEDGER_URL=proxy.url(postgres_url),
                    DPGOV_FAULT="before_reserve",
                    DPGOV_FAULT_PAUSE=str(pause),
                )
            ),
        )
        _wait_for(pause / "before_reserve.reached")
        proxy.down()  # the database goes away now: every connection reset, new ones refused
        (pause / "before_reserve.go").touch()
        ended = zygote.wait()
    finally:
        proxy.close()
    outcome = ended["outcome"]
    assert ended["exit"] == 0 and outcome is not None, ended
    assert outcome["error"] == "LedgerUnavailable" and outcome["exit_code"] == 2, outcome
    assert "does not answer" in outcome["message"]

    direct = world.env(DPGOV_LEDGER_URL=postgres_url)
    assert dpgov("ledger", "verify", env=direct).code == 0
    shown = dpgov("ledger", "show", "--json", env=direct).json()["entries"]
    # nothing reserved, not even a block registered: only the policy put in force first
    assert [e["kind"] for e in shown] == ["policy_set"]
    assert _runs(world) == []  # training never started


def test_tracking_unreachable_from_the_start(world: World, zygote: Zygote, tmp_path: Path) -> None:
    """No tracking store: the run reserves, cannot open its MLflow run, and releases the
    reservation before any step (nothing ran, nothing stays charged); commands that need the
    store say so in one line."""
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    ended = zygote.run(
        params=world.params(),
        policy=world.policy,
        result=tmp_path / "outcome.json",
        env=_env(world.env(MLFLOW_TRACKING_URI=dead, **fast)),
    )
    outcome = ended["outcome"]
    assert outcome is not None and outcome["error"] == "MlflowException", ended

    ledger = world.ledger()
    [res] = ledger.reservations()
    assert res.status == "released"
    [release] = ledger.entries("release")
    assert release.payload["reason"].startswith("no step ran")
    assert replayed_charges(ledger) == {} and ledger.verify().ok

    gate = dpgov(
        "gate",
        MODEL,
        "1",
        env=world.env(MLFLOW_TRACKING_URI=dead, **fast),
    )
    assert gate.code == 2 and gate.clean_error(), gate.err
    assert gate.err.startswith(f"error: tracking store {dead}")
    report = _audit(world, MLFLOW_TRACKING_URI=dead, **fast)
    assert "tracking_unavailable" in {f["kind"] for f in report["findings"]}
    ledger.close()


def _wait_for(path: Path, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the run never reached {path.name}"
        time.sleep(0.05)


@pytest.mark.postgres
def test_read_only_database_role(world: World, postgres_url: str) -> None:
    """An auditor's PostgreSQL role with SELECT only reads the ledger (show, verify, budget,
    audit); a write is refused in one line (exit 1) and records nothing."""
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger

    owner = Ledger.open(postgres_url)  # creates the schema as the owner
    owner.add_block(dataset="synthetic", block="2001", patients=100)
    m = DpSgdMechanism(noise_multiplier=5.0, sample_rate=0.01, steps=10)
    owner.reserve(dataset="synthetic", blocks=["2001"], mechanism=m, budget=world.budget())
    schema = make_url(postgres_url).query["options"].split("=")[-1]
    role = f"reader_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(make_url(postgres_url).set(query={}))
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        conn.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    try:
        url = make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
        env = world.env(DPGOV_LEDGER_URL=url)
        before = owner.head()
        for args in (
            ["ledger", "show"],
            ["ledger", "verify"],
            ["budget"],
        ):
            r = dpgov(*args, env=env)
            assert r.code == 0, (args, r.err)
        audit = dpgov("audit", "--json", env=env)
        assert audit.code in (0, 1) and audit.json()["ledger"]["chain_ok"], audit.err
        refused = dpgov(
            "ledger",
            "reserve",
            "--dataset",
            "synthetic",
            "--block",
            "2001",
            "--noise-multiplier",
            "5",
            "--sample-rate",
            "0.01",
            "--steps",
            "10",
            env=env,
        )
        assert refused.code == 1 and refused.clean_error(), refused.err
        assert "may not write the ledger" in refused.err
        assert owner.head() == before
    finally:
        owner.close()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()
