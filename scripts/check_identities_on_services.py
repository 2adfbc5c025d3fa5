"""Approvals on the shared services are recorded as the MLflow-authenticated user.

Too slow for the test suite (starting the services takes about a minute here), so a check to
run by hand or in CI next to ``tests/integration/reliability/test_services.py``::

    .venv/bin/python scripts/check_identities_on_services.py [--dir DIR] [--keep]

It starts ``scripts/services.sh start DIR --auth --no-worker`` (unless DIR already runs them),
creates two people as MLflow users (``services.sh user``), registers a candidate version as
the ``dpgov`` service user the way training does (a run with its facts, statement and model
files, a committed reservation, the ledger's ``facts_bound`` entry), then checks, each with a
real ``dpgov`` process:

1. the ``dpgov`` service identity (listed in ``governance.service_identities``) may not approve;
2. ``ana.lima`` approving ``--by carol.diaz`` is refused (not who acts), nothing recorded;
3. a wrong MLflow password is refused (exit 2: the server answers 401), nothing recorded;
4. ``ana.lima``'s approval is recorded with ``identity: ana.lima``, ``authenticated_by:
   mlflow-auth``, and the gate then passes.

Exit 0 when every check holds; the services are stopped and purged unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "scripts" / "services.sh"
MODEL = "ident-model"


def sh(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(SERVICES), *args], capture_output=True, text=True, env=env, timeout=400
    )
    if done.returncode != 0:
        sys.exit(f"services.sh {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def env_as(folder: Path, who: str) -> dict[str, str]:
    out = dict(os.environ)
    for line in sh("env", str(folder), "--as", who).splitlines():
        if line.startswith("export "):
            for item in shlex.split(line.removeprefix("export ")):
                key, _, value = item.partition("=")
                out[key] = value
    return out


def dpgov(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpgov", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        cwd=env["DPGOV_HOME"],
        timeout=300,
    )


def register(env: dict[str, str], home: Path) -> str:
    """As the dpgov service user: a candidate registered and bound as training does."""
    code = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT / "tests" / "unit" / "gate")!r})
from gate_factories import facts
from mlflow import MlflowClient
from dpgov.accounting import DpSgdMechanism
from dpgov.ledger import Ledger
from dpgov.ledger.policies import set_policy
from dpgov.policy import load_policy
from dpgov.tracking.binding import bind_version
from dpgov.tracking.registry import facts_json

home = {str(home)!r}
ledger = Ledger.open()
policy = os.path.join(home, "policy.yaml")
text = open({str(ROOT / "policies" / "default.yaml")!r}).read()
open(policy, "w").write(text + "governance:\\n  service_identities: [dpgov]\\n")
loaded = load_policy(policy)
set_policy(ledger, loaded, dataset=None, reason="identities check", actor="dpgov")
for b in ("1995", "1996"):
    ledger.add_block(dataset="flchain", block=b, patients=1000)
client = MlflowClient()
exp = client.create_experiment("ident-check")
rid = client.create_run(exp).info.run_id
res = ledger.reserve(dataset="flchain", blocks=["1995", "1996"],
    mechanism=DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.01, steps=20),
    budget=loaded.policy.budget, policy_sha256=loaded.sha256)
ledger.commit(res.id, run_id=rid)
f = facts(model_name={MODEL!r}, run_id=rid, reservation_id=res.id, epsilon=res.epsilon_run,
          ledger_entries=[res.seq], model_version=None, author="dpgov")
out = os.path.join(home, "art"); os.makedirs(os.path.join(out, "model"))
open(os.path.join(out, "candidate_facts.json"), "w").write(facts_json(f))
open(os.path.join(out, "privacy_statement.json"), "w").write(json.dumps({{"epsilon": f.epsilon}}))
open(os.path.join(out, "model", "weights.bin"), "wb").write(b"w" * 64)
client.log_artifact(rid, os.path.join(out, "candidate_facts.json"))
client.log_artifact(rid, os.path.join(out, "privacy_statement.json"))
client.log_artifacts(rid, os.path.join(out, "model"), "model")
client.set_terminated(rid)
client.create_registered_model({MODEL!r})
mv = client.create_model_version({MODEL!r}, source=f"runs:/{{rid}}/model", run_id=rid,
    tags={{"dpgov.status": "candidate", "dpgov.private": "true"}})
bind_version(ledger, model={MODEL!r}, version=str(mv.version), run_id=rid, reservation=res.id)
print(mv.version)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    if done.returncode != 0:
        sys.exit(f"registering the candidate failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="dpgov-ident-")) / "services"
    started = not (folder / "state.env").exists()
    if started:
        sh(
            "start",
            str(folder),
            "--auth",
            "--no-worker",
            env={**os.environ, "PREFECT_UI_ENABLED": "false"},
        )
    failures: list[str] = []
    try:
        for person in ("ana.lima", "carol.diaz"):
            sh("user", str(folder), "--name", person)
        home = Path(tempfile.mkdtemp(prefix="dpgov-ident-home-"))
        service = {**env_as(folder, "dpgov"), "DPGOV_HOME": str(home)}
        version = register(service, home)
        sh("grant", str(folder), "--model", MODEL)
        ana = {**env_as(folder, "ana.lima"), "DPGOV_HOME": str(home)}

        def check(name: str, ok: bool, detail: str) -> None:
            print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
            if not ok:
                failures.append(name)

        r = dpgov(service, "approve", MODEL, version, "--by", "dpgov")
        check(
            "the service identity may not approve",
            r.returncode == 2 and "service identity" in r.stderr,
            r.stderr,
        )
        r = dpgov(ana, "approve", MODEL, version, "--by", "carol.diaz")
        check(
            "--by another person is refused",
            r.returncode == 2 and "authenticates 'ana.lima' (mlflow-auth)" in r.stderr,
            r.stderr,
        )
        r = dpgov({**ana, "MLFLOW_TRACKING_PASSWORD": "wrong"}, "approve", MODEL, version)
        check("a wrong password is refused", r.returncode == 2 and "401" in r.stderr, r.stderr)
        r = dpgov(ana, "approve", MODEL, version, "--json")
        data = json.loads(r.stdout) if r.returncode == 0 else {}
        check(
            "ana.lima's approval is recorded as the MLflow-authenticated user",
            data.get("identity") == "ana.lima" and data.get("authenticated_by") == "mlflow-auth",
            r.stderr or r.stdout,
        )
        r = dpgov(ana, "gate", MODEL, version)
        check("the gate then passes", r.returncode == 0, r.stderr or r.stdout)
    finally:
        if started and not args.keep:
            sh("stop", str(folder), "--purge")
    print("all checks hold" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
