"""dpgov scaled out on real servers, started by ``scripts/services.sh``: a PostgreSQL ledger,
an MLflow tracking server on PostgreSQL with an artifact folder and its authentication app, a
Prefect server with a process work pool and a worker.

The whole governed pipeline runs through them (``dpgov run``, then the same run as a deployment
executed by the worker); only the ``dpgov`` identity can move a release alias; the tracking
server going away in the middle of a run loses no charge and leaves nothing promotable; and
``dpgov audit`` over everything explains what it finds.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.reliability.helpers import (
    LEDGER_BROKEN,
    RELEASE_BROKEN,
    REPO,
    Services,
    World,
    dpgov,
    dpgov_process,
    environment,
    recomputed_epsilon,
    write_policy,
)
from tests.integration.reliability.netfault import TcpProxy
from tests.integration.reliability.zygote import Zygote

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

MODEL = "rel-model"
BROKEN = (
    LEDGER_BROKEN | RELEASE_BROKEN | {"anchor_mismatch", "ledger_truncated", "tracking_unavailable"}
)


def _in_force(policy: Path, url: str) -> None:
    """The site's policy in force on the services' ledger, as `dpgov policy set` (and, where
    it raises a limit over charged blocks, `dpgov policy approve`) would put it."""
    from dpgov.gate.in_force import policy_in_force
    from dpgov.ledger import Ledger
    from dpgov.ledger.policies import approve_proposal, set_policy
    from dpgov.policy import load_policy

    ledger = Ledger.open(url)
    try:
        loaded = load_policy(policy)
        if policy_in_force(ledger).sha256 != loaded.sha256:
            entry, action = set_policy(ledger, loaded, dataset=None, reason="site", actor="tester")
            if action == "propose":
                approve_proposal(ledger, entry.seq, actor="test-approver")
    finally:
        ledger.close()


# Session-scoped, like the services: under `-n 2 --dist loadgroup` a worker may run other
# modules' tests between this module's, and a module-scoped world was built (and `dpgov run`
# run, ~45 s) again after each interruption.
@pytest.fixture(scope="session")
def site(
    services: Services, tmp_path_factory: pytest.TempPathFactory, cohort: tuple[Path, Path, Path]
) -> World:
    """The world of this module: the services, a working folder, the cohort, a policy with a
    budget that lasts all the runs here."""
    folder = tmp_path_factory.mktemp("site")
    prepared, raw, contract = cohort
    policy = write_policy(folder / "policy.yaml", epsilon_per_block=50.0)
    _in_force(policy, services.ledger_url)
    return World(
        home=folder / "home",
        data=prepared,
        raw=raw,
        contract=contract,
        policy=policy,
        ledger_url=services.ledger_url,
        tracking_uri=services.tracking_uri,
        extra_env={k: v for k, v in services.env.items() if k.startswith(("MLFLOW_", "PREFECT_"))},
    )


@pytest.fixture(scope="session")
def first_run(site: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``dpgov run`` once, as a user runs it, against the services."""
    folder = tmp_path_factory.mktemp("first-run")
    params = site.params_file(folder / "params.yaml")
    r = dpgov_process(
        "run",
        "--params",
        params,
        "--json",
        env=site.env(),
        cwd=folder,
        timeout=400,
    )
    assert r.code == 0, r.err[-3000:]
    return json.loads(r.out)  # stdout is only the JSON: MLflow's "View run" lines stay out


def _client(site: World) -> Any:
    """An MLflow client of the tracking server; it authenticates as whoever the environment
    names (MLFLOW_TRACKING_USERNAME/PASSWORD) when it makes a request."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=site.tracking_uri, registry_uri=site.tracking_uri)


def _person(services: Services, name: str) -> dict[str, str]:
    """``name`` as an MLflow user (``services.sh user``; EDIT on the model after ``grant``):
    the credentials dpgov authenticates them with. Without the auth app every process is the
    ledger's PostgreSQL role, one identity: approvals by a second person cannot be shown."""
    if not services.auth:
        pytest.skip("a second identity on the services needs MLflow's auth app (mlflow[auth])")
    script = str(REPO / "scripts" / "services.sh")
    folder = str(services.folder)
    if not (services.folder / "users" / f"{name}.env").exists():
        made = subprocess.run(
            [script, "user", folder, "--name", name], capture_output=True, text=True, timeout=60
        )
        assert made.returncode == 0, made.stderr
    granted = subprocess.run(
        [script, "grant", folder, "--model", MODEL], capture_output=True, text=True, timeout=120
    )
    assert granted.returncode == 0, granted.stderr
    shown = subprocess.run(
        [script, "env", folder, "--as", name], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    creds = {}
    for line in shown.stdout.splitlines():
        for item in line.removeprefix("export ").split():
            key, _, value = item.partition("=")
            if key.startswith("MLFLOW_TRACKING_"):
                creds[key] = value.strip("'")
    return creds


def test_governed_pipeline_on_servers(
    services: Services, site: World, first_run: dict[str, Any]
) -> None:
    summary = first_run
    assert summary["orchestration"]["api"] == "server"
    assert summary["orchestration"]["api_url"] == services.env["PREFECT_API_URL"]
    assert summary["model_version"] and summary["steps"] == 8

    # the ledger is the PostgreSQL database, and it verifies
    ledger = site.ledger()
    assert ledger.dialect == "postgresql" and ledger.verify().ok
    res = ledger.reservation(summary["reservation"])
    assert res.status == "committed" and res.mechanism.steps == summary["steps"]

    # run, model version and artifacts are on the tracking server, artifacts in its folder
    with environment(services.env):
        client = _client(site)
        run = client.get_run(summary["run_id"])
        version = client.get_model_version(MODEL, summary["model_version"])
        artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert version.run_id == summary["run_id"]
    assert {"candidate_facts.json", "privacy_statement.json"} <= artifacts
    stored = {p.name for p in (services.folder / "mlartifacts").rglob("*") if p.is_file()}
    assert {"candidate_facts.json", "privacy_statement.json"} <= stored

    # the flow run is recorded by the Prefect server
    import httpx

    api = services.env["PREFECT_API_URL"]
    flows = httpx.post(f"{api}/flow_runs/filter", json={"limit": 50}, timeout=30).json()
    assert any(f["state_type"] == "COMPLETED" for f in flows)

    # an approval by alice, recorded as the MLflow user the server authenticates; the gate
    # and the promotion as the dpgov identity
    v = summary["model_version"]
    refused = dpgov("approve", MODEL, v, "--by", "alice", env=site.env())
    assert refused.code == 2 and "not who acts" in refused.err  # dpgov is not alice
    approved = dpgov("approve", MODEL, v, "--json", env=site.env(**_person(services, "alice")))
    assert approved.code == 0, approved.err
    assert approved.json()["identity"] == "alice"
    assert approved.json()["authenticated_by"] == "mlflow-auth"
    promoted = dpgov("promote", MODEL, v, "--json", env=site.env())
    assert promoted.code == 0, promoted.err
    with environment(services.env):
        assert _client(site).get_model_version_by_alias(MODEL, "champion").version == v


def test_worker_runs_the_deployment(services: Services, site: World, tmp_path: Path) -> None:
    """``dpgov schedule --pool`` sends the deployments to the work pool; the worker that
    services.sh started runs a triggered governed run against the same ledger and server."""
    params = site.params_file(tmp_path / "params.yaml", seed=1)
    pool = services.env["DPGOV_WORK_POOL"]
    deployed = dpgov_process(
        "schedule",
        "--cron",
        "0 3 1 * *",
        "--pool",
        pool,
        "--params",
        params,
        "--json",
        env=site.env(),
        cwd=tmp_path,
    )
    assert deployed.code == 0, deployed.err[-2000:]
    names = {d["name"] for d in json.loads(deployed.out)["deployments"]}
    assert "governed-run/dpgov-run" in names

    before = {r.id for r in site.ledger().reservations()}
    triggered = dpgov_process(
        "flows",
        "run",
        "governed-run/dpgov-run",
        "--wait",
        "300",
        "--json",
        env=site.env(),
        cwd=tmp_path,
        timeout=400,
    )
    assert triggered.code == 0, triggered.err[-2000:]
    assert json.loads(triggered.out)["state"] == "COMPLETED"
    ledger = site.ledger()
    [new] = [r for r in ledger.reservations() if r.id not in before]
    assert new.status == "committed" and ledger.verify().ok
    assert (services.folder / "logs" / "worker.log").read_text().count("governed-run") >= 1


def test_only_dpgov_moves_release_aliases(
    services: Services, site: World, first_run: dict[str, Any]
) -> None:
    """With MLflow's basic-auth app: `dpgov` (MANAGE on the registered model) may move an
    alias; `analyst` (READ) may read but not move it, neither directly nor through dpgov."""
    if not services.auth:
        pytest.skip("MLflow's auth app needs mlflow[auth] (Flask-WTF)")
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    ids = services.identities
    granted = subprocess.run(
        [str(REPO / "scripts" / "services.sh"), "grant", str(services.folder), "--model", MODEL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert granted.returncode == 0, granted.stderr
    with environment(ids["admin"]):
        admin = get_app_client("basic-auth", tracking_uri=site.tracking_uri)
        assert admin.get_user_permission("dpgov", "registered_model", MODEL).permission == "MANAGE"
        assert admin.get_user_permission("analyst", "registered_model", MODEL).permission == "READ"
    v = first_run["model_version"]
    alias = "challenger"

    with environment(ids["analyst"]):
        analyst = _client(site)
        assert analyst.get_model_version(MODEL, v).run_id == first_run["run_id"]  # may read
        with pytest.raises(MlflowException) as denied:
            analyst.set_registered_model_alias(MODEL, alias, v)
    assert denied.value.error_code == "PERMISSION_DENIED"

    # dpgov run by the analyst: refused by the tracking server, one line, nothing moved
    ledger = site.ledger()
    promotions = len(ledger.entries("promotion"))
    as_analyst = dpgov(
        "promote",
        MODEL,
        v,
        "--alias",
        alias,
        env=site.env(**ids["analyst"]),
    )
    assert as_analyst.code == 1 and as_analyst.clean_error(), as_analyst.err
    assert "PERMISSION_DENIED" in as_analyst.err
    assert len(ledger.entries("promotion")) == promotions

    # without credentials: not even reading
    anonymous = {"MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None}
    with environment(anonymous), pytest.raises(MlflowException):
        _client(site).get_model_version(MODEL, v)

    lead = _person(services, "clinical-lead")
    approved = dpgov("approve", MODEL, v, "--by", "clinical-lead", env=site.env(**lead))
    assert approved.code == 0, approved.err  # the gate's approvals must be on record
    as_dpgov = dpgov("promote", MODEL, v, "--alias", alias, "--json", env=site.env())
    assert as_dpgov.code == 0, as_dpgov.err
    with environment(ids["analyst"]):
        assert _client(site).get_model_version_by_alias(MODEL, alias).version == v


def test_tracking_server_lost_mid_run(
    services: Services, site: World, zygote: Zygote, tmp_path: Path
) -> None:
    """The tracking server becomes unreachable between training and commit: the charge is
    committed all the same (no charge lost), the ledger verifies, and the run leaves no model
    version that could be promoted."""
    from urllib.parse import urlsplit

    target = urlsplit(site.tracking_uri)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    pause = tmp_path / "pause"
    pause.mkdir()
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    env = site.env(
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{proxy.port}",
        DPGOV_HOME=str(tmp_path / "home"),
        DPGOV_FAULT="after_train",
        DPGOV_FAULT_PAUSE=str(pause),
        **fast,
    )
    ledger = site.ledger()
    before = {r.id for r in ledger.reservations()}
    try:
        zygote.submit(
            params=site.params(seed=2),
            policy=site.policy,
            result=tmp_path / "outcome.json",
            env={k: v for k, v in env.items() if v is not None},
        )
        _wait_for(pause / "after_train.reached")
        proxy.down()
        (pause / "after_train.go").touch()
        ended = zygote.wait()
    finally:
        proxy.close()
    assert ended["signal"] != signal.SIGKILL
    outcome = ended["outcome"]
    assert outcome is not None and not outcome["ok"] and outcome["error"] == "MlflowException"

    [res] = [r for r in ledger.reservations() if r.id not in before]
    assert res.status == "committed" and res.mechanism.steps == 8  # every step that ran
    assert ledger.verify().ok
    charged = recomputed_epsilon(ledger, site.budget())
    shown = dpgov("budget", "--json", env=site.env()).json()
    for block in shown["datasets"][0]["blocks"]:  # test blocks hold no charge: 0
        spent = charged.get(("synthetic", block["block"]), 0.0)
        assert block["epsilon_spent"] == pytest.approx(spent)

    [commit] = [e for e in ledger.entries("commit") if e.payload["reservation"] == res.id]
    run_id = commit.payload["run_id"]
    with environment(services.env):
        client = _client(site)
        run = client.get_run(run_id)
        versions = client.search_model_versions(f"name = '{MODEL}'")
    assert run.info.status == "RUNNING"  # the run could not even be marked failed
    assert run.data.tags["dpgov.reservation"] == res.id
    assert [v for v in versions if v.run_id == run_id] == []  # nothing to promote

    # the audit lists the charge as committed, its MLflow run still RUNNING
    report = dpgov("audit", "--json", env=site.env()).json()
    [row] = [x for x in report["runs"] if x["reservation"] == res.id]
    assert (row["status"], row["mlflow_run"], row["mlflow_status"]) == (
        "committed",
        run_id,
        "RUNNING",
    ), row
    assert [f["run_id"] for f in report["findings"] if f["kind"] == "run_left_running"] == [run_id]


def test_audit_explains_the_shared_world(services: Services, site: World) -> None:
    """``dpgov audit`` over the PostgreSQL ledger and the tracking server: nothing broken;
    after ``--anchor`` no commit is left unanchored."""
    r = dpgov("audit", "--json", "--anchor", env=site.env())
    assert r.code in (0, 1), r.err
    report = r.json()
    assert not {f["kind"] for f in report["findings"]} & BROKEN, report["findings"]
    assert report["ledger"]["chain_ok"]
    again = dpgov("audit", "--json", env=site.env()).json()
    assert "unanchored_commits" not in {f["kind"] for f in again["findings"]}
    promoted = {e.payload["alias"] for e in site.ledger().entries("promotion")}
    assert {x["alias"] for x in again["releases"]} == promoted


def _wait_for(path: Path, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the run never reached {path.name}"
        time.sleep(0.05)
