"""Where state lives: the dpgov home folder and the services named by the environment.

Embedded default: everything under ``$DPGOV_HOME`` (default ``.dpgov/`` in the working
directory): the SQLite ledger, the MLflow store, the Prefect home and the DVC local remote.
"""

from __future__ import annotations

import os
from pathlib import Path

from dpgov import names
from dpgov.errors import UsageError
from dpgov.redaction import port_problem, redact


def home() -> Path:
    """The dpgov home folder (created on first use)."""
    path = Path(os.environ.get("DPGOV_HOME", ".dpgov")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def ledger_url() -> str:
    """SQLAlchemy URL of the ledger: ``DPGOV_LEDGER_URL`` or SQLite in the home folder."""
    url = os.environ.get("DPGOV_LEDGER_URL")
    if url:
        return _checked_url("DPGOV_LEDGER_URL", url)
    return f"sqlite:///{home() / 'ledger.db'}"


def mlflow_tracking_uri() -> str:
    """MLflow tracking URI: ``MLFLOW_TRACKING_URI`` or SQLite in the home folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return _checked_url("MLFLOW_TRACKING_URI", uri)
    return f"sqlite:///{home() / 'mlflow.db'}"


def _checked_url(variable: str, url: str) -> str:
    """``url`` when its port is usable; else one line naming the variable (credentials
    redacted, the value cut)."""
    problem = port_problem(url)
    if problem is not None:
        raise UsageError(f"{variable}: {problem} (in {names.quote(redact(url))})")
    return url


def mlflow_artifact_root() -> Path:
    return home() / "mlartifacts"


def dvc_remote() -> Path:
    """The default DVC remote: a folder in the home folder."""
    return home() / "dvc-remote"


def actor() -> str:
    """Who is acting: ``DPGOV_ACTOR``, else the operating-system user; an identity name
    (:data:`dpgov.names.IDENTITY_RULE`), else UsageError naming where it came from."""
    explicit = os.environ.get("DPGOV_ACTOR")
    if explicit:
        return names.identity(explicit, argument="DPGOV_ACTOR")
    try:
        import getpass

        user = getpass.getuser()
    except Exception:  # pragma: no cover - no user database in some containers
        return "unknown"
    try:
        return names.identity(user, argument="the operating-system user")
    except UsageError as err:
        raise UsageError(f"{err}; set DPGOV_ACTOR to an identity name") from None
