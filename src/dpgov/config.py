"""Where state lives: the dpgov home folder and the services named by the environment.

Embedded default: everything under the home folder: ``$DPGOV_HOME``, else the folder a
project's ``dpgov.toml`` names (found from the working directory upwards), else ``.dpgov/`` in
the working directory. It holds the SQLite ledger, the MLflow store, the Prefect home and the
DVC local remote.
"""

from __future__ import annotations

import os
from pathlib import Path

from dpgov import names
from dpgov.errors import UsageError
from dpgov.redaction import port_problem, redact

PROJECT_FILE = "dpgov.toml"
created_ledgers: list[Path] = []  # SQLite ledgers this process created (the CLI says so)
_PROJECT_KEYS = frozenset({"home"})


def home() -> Path:
    """The dpgov home folder (created on first use): ``$DPGOV_HOME``, else the ``home`` of the
    nearest ``dpgov.toml`` in the working directory or a folder above it (relative to that
    file), else ``.dpgov/`` in the working directory."""
    explicit = os.environ.get("DPGOV_HOME")
    path = Path(explicit).expanduser() if explicit else project_home() or Path(".dpgov")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def project_file(start: Path | None = None) -> Path | None:
    """The nearest ``dpgov.toml`` from ``start`` (the working directory) upwards, or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def project_home(start: Path | None = None) -> Path | None:
    """The home folder a project's ``dpgov.toml`` names (``home = "..."``, relative to the
    file; default ``.dpgov`` beside it), or None without one. A file that is not TOML, or
    holds other keys, is a UsageError naming it."""
    found = project_file(start)
    if found is None:
        return None
    import tomllib

    try:
        data = tomllib.loads(found.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{found}: not a valid TOML file ({one_line_reason(err)})") from None
    unknown = sorted(set(data) - _PROJECT_KEYS)
    if unknown:
        raise UsageError(
            f"{found}: unknown key {unknown[0]!r} (a dpgov.toml may set: "
            f"{', '.join(sorted(_PROJECT_KEYS))})"
        )
    value = data.get("home", ".dpgov")
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{found}: home must be a folder path (a non-empty string)")
    path = Path(value).expanduser()
    return path if path.is_absolute() else found.parent / path


def export_project_home() -> None:
    """Set ``DPGOV_HOME`` from the project's ``dpgov.toml`` when it is not set, so every
    process the command starts (flows, workers, DVC stages) uses the same home."""
    if not os.environ.get("DPGOV_HOME"):
        found = project_home()
        if found is not None:
            os.environ["DPGOV_HOME"] = str(found.resolve())


def one_line_reason(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


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
