"""Who acts: the identity the deployment authenticates, never a typed name.

Part of the base (importable from every layer; imports nothing of dpgov's layers).

:func:`acting_identity` answers, in this order:

1. **MLflow auth** (``mlflow-auth``): when ``MLFLOW_TRACKING_URI`` is an ``http(s)`` tracking
   server and ``MLFLOW_TRACKING_USERNAME`` is set, the user the server authenticates with
   ``MLFLOW_TRACKING_PASSWORD``: ``GET /api/2.0/mlflow/users/current`` of MLflow's
   ``basic-auth`` app, which answers the authenticated user's name (a wrong password is
   refused by the server, and so here).
2. **PostgreSQL role** (``postgresql-role``): for a PostgreSQL ledger, ``SELECT current_user``
   on the ledger's own connection, i.e. the role the database authenticated (with password
   authentication configured in ``pg_hba.conf``: docs/scaling.md).
3. **Operating-system user** (``os-user``): otherwise, the user of the process's real uid
   (``pwd.getpwuid(os.getuid())``), which no environment variable changes.

``DPGOV_ACTOR`` never establishes who acts: it stays a label of ledger entries
(:func:`dpgov.config.actor`), and governance operations (approvals, refusals, promotions,
recalls, policy changes) record :func:`acting_identity` instead. Every name is an identity name
(:func:`dpgov.names.identity`); anything else is refused, never normalised.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from dpgov import names
from dpgov.errors import UsageError
from dpgov.redaction import redact

# "ssh-signature": an approver authenticated by a signature verified with the key the policy
# lists for them (answers to the Prefect approval pause, recorded by a worker; dpgov.gate).
Method = Literal["mlflow-auth", "postgresql-role", "os-user", "ssh-signature"]
AUTH_TIMEOUT_S = 10.0
_CACHE: dict[tuple[str, ...], Identity] = {}


@dataclass(frozen=True)
class Identity:
    """An authenticated identity: its name and how the deployment authenticated it."""

    name: str
    method: Method
    where: str = ""  # the server or database that authenticated it (credentials redacted)

    def to_dict(self) -> dict[str, str]:
        return {"identity": self.name, "authenticated_by": self.method, "where": self.where}


def os_user() -> str:
    """The operating-system user of the process's real uid (not ``$USER``, not ``getlogin``)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError as err:
        raise UsageError(
            f"the operating-system user (uid {os.getuid()}) has no entry in the user database: "
            "no identity can be authenticated"
        ) from err


def _mlflow_auth_user(uri: str, username: str, password: str) -> str:
    """The user MLflow's basic-auth app authenticates with these credentials."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/api/2.0/mlflow/users/current"
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    shown = redact(uri)
    try:
        with urllib.request.urlopen(request, timeout=AUTH_TIMEOUT_S) as reply:
            body: Any = json.loads(reply.read(65536).decode("utf-8"))
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise UsageError(
                f"the tracking server {shown} refused MLFLOW_TRACKING_USERNAME "
                f"{names.quote(username)} (HTTP {err.code}): no authenticated identity"
            ) from None
        if err.code == 404:
            raise UsageError(
                f"the tracking server {shown} runs no auth app (no /users/current): unset "
                "MLFLOW_TRACKING_USERNAME, or start it with --app-name basic-auth"
            ) from None
        raise UsageError(f"the tracking server {shown} answered HTTP {err.code}") from None
    except (OSError, ValueError) as err:
        raise UsageError(
            f"cannot authenticate against the tracking server {shown}: {err}"
        ) from None
    user = body.get("user", {}).get("username") if isinstance(body, dict) else None
    if not isinstance(user, str):
        raise UsageError(f"the tracking server {shown} did not name the authenticated user")
    return user


def _postgres_role(ledger: Any) -> str:
    import sqlalchemy as sa

    with ledger.engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT current_user")).scalar_one())


def acting_identity(ledger: Any = None) -> Identity:
    """Who acts now, as the deployment authenticates it (see the module docstring).

    ``ledger`` is the open :class:`dpgov.ledger.Ledger` the action writes to (its PostgreSQL
    role is the identity when no MLflow auth applies); without one, the OS user is used unless
    MLflow auth applies. Raises UsageError (exit 2) when the authenticated name is not an
    identity name or cannot be established.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    username = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    if uri.startswith(("http://", "https://")) and username:
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
        key = ("mlflow", uri, username, password)
        if key not in _CACHE:
            user = _mlflow_auth_user(uri, username, password)
            name = names.identity(user, argument="the tracking server's authenticated user")
            _CACHE[key] = Identity(name, "mlflow-auth", redact(uri))
        return _CACHE[key]
    if ledger is not None and getattr(ledger, "dialect", "") == "postgresql":
        role = _postgres_role(ledger)
        where = redact(str(ledger.engine.url.render_as_string(hide_password=True)))
        name = names.identity(role, argument="the ledger's PostgreSQL role (current_user)")
        return Identity(name, "postgresql-role", where)
    return Identity(names.identity(os_user(), argument="the operating-system user"), "os-user")
