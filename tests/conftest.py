"""Shared fixtures: an isolated dpgov home, and real SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# One fixed pseudonym key for the suite: pseudonyms, and so each patient's keyed train/test
# split, are then the same in every run (a key file created per home drew a new split each time,
# and a small test subgroup fell below its validation minimum in about one run in twenty). Tests
# of the key file itself unset it.
os.environ.setdefault("DPGOV_PSEUDONYM_KEY", "dpgov test suite pseudonym key")

POSTGRES_URL = os.environ.get(
    "DPGOV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPO = Path(__file__).resolve().parents[1]


def _absl_handler_leaves_streams_open() -> None:
    """absl's logging handler (imported with dp_accounting) closes the stream it holds when a
    logging reconfiguration closes it (Prefect's ``dictConfig`` does, on first import) unless
    that stream is the *current* ``sys.stderr``. Under pytest the stream it took may be one of
    pytest's capture files, and closing it breaks every later capture ("I/O operation on
    closed file", or a collection that ends in "lost sys.stderr"). In tests the handler only
    flushes on close; streams belong to whoever opened them."""
    import logging

    try:
        from absl.logging import PythonHandler
    except ImportError:  # pragma: no cover - absl comes with dp_accounting
        return
    PythonHandler.close = logging.StreamHandler.close  # type: ignore[method-assign]


_absl_handler_leaves_streams_open()


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store, created once per session and copied into each
    test's home (creating the tables costs a second or two per store)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def home(dpgov_home: Path, mlflow_store_template: Path) -> Path:
    """``dpgov_home`` with the migrated MLflow store copied in."""
    shutil.copy(mlflow_store_template, dpgov_home / "mlflow.db")
    return dpgov_home


@pytest.fixture
def dpgov_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh DPGOV_HOME with SQLite ledger and MLflow store inside it."""
    home = tmp_path / "dpgov-home"
    home.mkdir()
    monkeypatch.setenv("DPGOV_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.delenv("DPGOV_LEDGER_URL", raising=False)
    monkeypatch.delenv("DPGOV_LEDGER_HMAC_KEY", raising=False)
    return home


def _postgres_reason() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'dpgov[postgres]')"
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    try:
        psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            dbname=url.database,
            password=url.password,
            connect_timeout=3,
        ).close()
    except Exception as err:  # any failure to connect means: skip, and say why
        return f"no PostgreSQL answers at {url.render_as_string(hide_password=True)}: {err}"
    return None


_PG_REASON = _postgres_reason()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    if _PG_REASON:
        pytest.skip(_PG_REASON)
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each ledger test runs on a real SQLite file and on a real PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_url")
