"""The scale-out path for real: ``prefect server start`` on loopback (a random free port), a
process worker (``prefect worker start -p POOL``), ``dpgov schedule --pool`` sending the
deployments to its work pool, and ``dpgov flows run`` triggering them. Two data versions arrive
(ingest runs on the worker too); the second retraining may use only blocks with budget left.
Then ``dpgov schedule --cron`` serves the same deployments from its own process.

Everything here runs in subprocesses with their own environment (no test harness involved).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dpgov.testing.policies import put_in_force
from tests.integration.orchestration.conftest import small_train, write_policy

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
POOL = "gpu-test"
STARTUP_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server at {url} not healthy in {STARTUP_S} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class World:
    env: dict[str, str]
    api: str
    tmp: Path
    home: Path
    logs: Path

    def dpgov(self, *args: str, timeout: float = 300) -> dict[str, Any]:
        out = subprocess.run(
            [str(BIN / "dpgov"), *args, "--json"],
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, (
            f"dpgov {' '.join(args)} exited {out.returncode}: {out.stderr}\n"
            f"worker log: {self.logs.read_text()[-4000:] if self.logs.exists() else ''}"
        )
        return dict(json.loads(out.stdout))

    def start(self, name: str, *cmd: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        handle = log.open("wb")
        return subprocess.Popen(
            list(cmd),
            env=self.env,
            cwd=self.tmp,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A Prefect server on loopback with its own home; dpgov's home for every process."""
    tmp = tmp_path_factory.mktemp("scale-out")
    home = tmp / "dpgov-home"
    home.mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DPGOV_"))},
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "DPGOV_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    w = World(env=env, api=api, tmp=tmp, home=home, logs=tmp / "worker.log")
    log = tmp / "server.log"
    server = w.start(
        "server",
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ui",
        "--analytics-off",
        "--no-services",
    )
    try:
        _wait_healthy(api, server, log)
        yield w
    finally:
        _stop(server)


def _cohort(w: World) -> dict[str, Any]:
    """A git+DVC repository, two arrival files (years 2001-2002, then 2003-2004), params and
    a policy whose budget one run nearly spends."""
    from dpgov.data.ingest import init_repo
    from dpgov.testing.sources import make_tabular, tabular_contract, write_yaml

    repo = init_repo(w.tmp / "repo", remote=w.home / "dvc-remote")
    table = make_tabular(800, n_blocks=4, start_year=2001, seed=1)
    arrivals = []
    for k, years in enumerate([[2001, 2002], [2003, 2004]], start=1):
        path = w.tmp / f"arrival-{k}.csv"
        table[table["year"].isin(years)].to_csv(path, index=False)
        arrivals.append(path)
    contract = write_yaml(
        tabular_contract("synth", min_block=20, min_subgroup=5), repo / "contract.yaml"
    )
    raw, prepared = repo / "raw" / "synth.csv", repo / "prepared" / "synth"
    params = {
        "data": {"dataset": "synth", "source": str(raw), "contract": str(contract)},
        "train": small_train(data=str(prepared), model_name="pool-model"),
    }
    params_file = w.tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    return {
        "repo": repo,
        "arrivals": arrivals,
        "raw": raw,
        "prepared": prepared,
        "params": params,
        "params_file": params_file,
        "policy": write_policy(w.tmp, epsilon_per_block=2.2),
    }


def _ingest(w: World, c: dict[str, Any], k: int) -> dict[str, Any]:
    return w.dpgov(
        "flows",
        "run",
        "ingest/dpgov-ingest",
        "-p",
        f"arrival={c['arrivals'][k]}",
        "-p",
        f"raw={c['raw']}",
        "-p",
        f"prepared={c['prepared']}",
        "-p",
        f"repo={c['repo']}",
        "-p",
        f"params={json.dumps(c['params'])}",
        "--wait",
        "240",
    )


def _retrain(w: World) -> dict[str, Any]:
    return w.dpgov("flows", "run", "retraining/dpgov-retraining", "--wait", "240")


def test_worker_runs_retraining_then_schedule_takes_over(world: World) -> None:
    """A worker runs the deployments over two data versions; then ``dpgov schedule --cron``
    serves the same deployments from its own process (one test: the second half needs the
    first half's world)."""
    _worker_runs_retraining_over_two_data_versions(world)
    _schedule_serves_the_deployments_from_its_own_process(world)


def _worker_runs_retraining_over_two_data_versions(world: World) -> None:
    from dpgov.ledger import Ledger

    w = world
    c = _cohort(w)
    worker = w.start(
        "worker",
        str(BIN / "prefect"),
        "worker",
        "start",
        "-p",
        POOL,
        "--type",
        "process",
        "--install-policy",
        "never",
    )
    try:
        # the deployments enforce the policy in force on the ledger: set it there first
        put_in_force(c["policy"], url=f"sqlite:///{w.home / 'ledger.db'}")
        deployed = w.dpgov(
            "schedule",
            "--cron",
            "0 3 1 * *",
            "--pool",
            POOL,
            "--params",
            str(c["params_file"]),
            "--min-remaining",
            "0.5",
        )
        assert {d["work_pool"] for d in deployed["deployments"]} == {POOL}

        first_data = _ingest(w, c, 0)
        assert first_data["state"] == "COMPLETED"
        first = _retrain(w)
        assert first["state"] == "COMPLETED"
        second_data = _ingest(w, c, 1)
        assert second_data["state"] == "COMPLETED"
        second = _retrain(w)
        assert second["state"] == "COMPLETED"
    finally:
        _stop(worker)

    led = Ledger.open(f"sqlite:///{w.home / 'ledger.db'}")
    try:
        reservations = [e.payload for e in led.entries("reservation")]
        assert [r["blocks"] for r in reservations] == [["2001", "2002"], ["2003", "2004"]]
        assert reservations[0]["data_version"] != reservations[1]["data_version"]
        retired = {e.payload["block"] for e in led.entries("block_retired")}
        assert retired == {"2001", "2002"}
        budget = yaml.safe_load(Path(c["policy"]).read_text())["budget"]
        from dpgov.policy.schema import Budget

        for status in led.budget(Budget(**budget), dataset="synth"):
            assert status.epsilon_spent <= status.epsilon_limit
            if status.split == "test":  # test blocks: charged only by DP evaluations
                assert status.charges == 0
                continue
            # the second run used only blocks that had budget left
            assert status.charges == 1
    finally:
        led.close()


def _schedule_serves_the_deployments_from_its_own_process(world: World) -> None:
    """After the worker's runs: ``dpgov schedule --cron`` takes the deployments over and runs
    a triggered retraining itself (no new data since: skipped, on record)."""
    from dpgov.ledger import Ledger

    w = world
    served = w.start(
        "serve",
        str(BIN / "dpgov"),
        "schedule",
        "--cron",
        "*/30 * * * *",
        "--params",
        str(w.tmp / "params.yaml"),
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            d = httpx.post(
                f"{w.api}/deployments/filter",
                json={"deployments": {"name": {"any_": ["dpgov-retraining"]}}},
                timeout=5,
            ).json()
            crons = [x["schedule"].get("cron") for x in (d[0]["schedules"] if d else [])]
            if "*/30 * * * *" in crons:
                break
            assert served.poll() is None, (w.tmp / "serve.log").read_text()
            assert time.monotonic() < deadline, (w.tmp / "serve.log").read_text()
            time.sleep(1)
        result = _retrain(w)
        assert result["state"] == "COMPLETED"
    finally:
        _stop(served)
    led = Ledger.open(f"sqlite:///{w.home / 'ledger.db'}")
    try:
        (skip,) = led.entries("retraining_skipped")
        assert skip.payload["reason"].startswith("no new data")
    finally:
        led.close()


def test_schedule_without_a_server_starts_one_whose_scheduler_fires(tmp_path: Path) -> None:
    """Prefect's temporary server runs no scheduler: without PREFECT_API_URL, ``dpgov schedule``
    starts ``prefect server start`` itself (state in $DPGOV_HOME/prefect), and the cron
    schedule produces runs; stopping dpgov stops that server."""
    home = tmp_path / "home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DPGOV_"))},
        "DPGOV_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    err = tmp_path / "schedule.err"
    with err.open("wb") as handle:
        proc = subprocess.Popen(
            [str(BIN / "dpgov"), "schedule", "--cron", "*/5 * * * *"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=handle,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_S
        url = None
        while url is None:
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            for line in err.read_text().splitlines():
                if line.startswith("orchestration: local Prefect server "):
                    url = line.split()[4]
            time.sleep(0.5)
        assert (home / "prefect" / "server.log").exists()
        runs: list[Any] = []
        while not runs:
            assert time.monotonic() < deadline, err.read_text()
            runs = httpx.post(
                f"{url}/flow_runs/filter",
                json={
                    "deployments": {"name": {"any_": ["dpgov-retraining"]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                },
                timeout=5,
            ).json()
            time.sleep(1)
        assert runs[0]["auto_scheduled"] is True
    finally:
        _stop(proc)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)
