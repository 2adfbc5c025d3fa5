"""Fixtures of the reliability tests: one zygote (training processes to kill, forked from a
process that imported the training stack once), one prepared synthetic cohort, isolated worlds
(home, SQLite ledger, MLflow SQLite store) per test, and the shared services of
``scripts/services.sh`` (PostgreSQL ledger, MLflow and Prefect servers), started once."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.reliability.helpers import (
    REPO,
    Services,
    World,
    validate,
    write_policy,
)
from tests.integration.reliability.zygote import Zygote


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A prepared synthetic cohort of 600 patients in 4 year blocks: (prepared, raw, contract),
    validated once under the worlds' policy (``write_policy``) where their governed runs reuse
    the validation (``helpers.validation_folder``)."""
    from dpgov.testing.runs import governed_data

    root = tmp_path_factory.mktemp("cohort")
    prepared = governed_data(root, n=600, n_blocks=4).prepared
    raw, contract = root / "raw" / "synthetic.csv", root / "raw" / "synthetic.yaml"
    validate(prepared, raw, contract, write_policy(root / "policy.yaml"))
    return prepared, raw, contract


@pytest.fixture
def world(tmp_path: Path, cohort: tuple[Path, Path, Path], mlflow_store_template: Path) -> World:
    """An isolated installation: SQLite ledger and MLflow store in a fresh home."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_store_template, home / "mlflow.db")
    prepared, raw, contract = cohort
    from dpgov.testing.policies import put_in_force

    policy = write_policy(tmp_path / "policy.yaml")
    url = f"sqlite:///{home / 'ledger.db'}"
    put_in_force(policy, url=url)  # the world's policy is the one in force on its ledger
    return World(
        home=home,
        data=prepared,
        raw=raw,
        contract=contract,
        policy=policy,
        ledger_url=url,
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
    )


# --------------------------------------------------------------------------- shared services


def _exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            for token in shlex.split(line[len("export ") :]):
                key, _, value = token.partition("=")
                out[key] = value
    return out


def _services_skip_reason() -> str | None:
    if not shutil.which("curl"):
        return "scripts/services.sh needs curl"
    try:
        import psycopg

        psycopg.connect(SERVICES_PG_URL, connect_timeout=3).close()
    except Exception as err:  # any failure to connect: skip, and say why
        return f"no PostgreSQL answers at {SERVICES_PG_URL}: {err}"
    return None


SERVICES_PG_URL = os.environ.get(
    "DPGOV_SERVICES_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A PostgreSQL ledger, an MLflow server on PostgreSQL (with its basic-auth app when
    ``mlflow[auth]`` is installed) and a Prefect server with a process work pool and a worker,
    started once by ``scripts/services.sh`` and stopped (databases dropped) at the end."""
    reason = _services_skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        import flask_wtf  # noqa: F401

        auth = True
    except ImportError:
        auth = False
    folder = tmp_path_factory.mktemp("services")
    script = str(REPO / "scripts" / "services.sh")
    env = {**os.environ, "PREFECT_UI_ENABLED": "false", "DPGOV_SERVICES_PG_URL": SERVICES_PG_URL}
    started = subprocess.run(
        [script, "start", str(folder), *(["--auth"] if auth else [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    try:
        assert started.returncode == 0, f"services.sh start failed:\n{started.stderr[-3000:]}"
        identities = {}
        for who in ("dpgov", "analyst", "admin") if auth else ("dpgov",):
            shown = subprocess.run(
                [script, "env", str(folder), "--as", who],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=True,
            )
            identities[who] = _exports(shown.stdout)
        yield Services(folder, identities["dpgov"], auth, identities)
    finally:
        subprocess.run(
            [script, "stop", str(folder), "--purge"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
