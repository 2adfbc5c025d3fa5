"""A second authenticated identity for ``dpgov demo``'s release (docs/gate.md, "The demo's
approver").

The demo trains and records as who runs it (the author). Where the deployment authenticates a
second identity, the release is approved by it and the release policy keeps
``approvals.allow_author: false``: ``dpgov demo --approver-ledger-url URL`` (or
``DPGOV_APPROVER_LEDGER_URL``) is the same ledger reached as another PostgreSQL role, whose
``current_user`` :func:`dpgov.identity.acting_identity` records as the approver
(``postgresql-role``). The URL travels in the environment, never as a Prefect flow parameter
(those are stored by the Prefect server, and the URL may carry a password).

Checked before the demo charges anything, and again before the approval is recorded: the URL
reaches this very ledger (:func:`same_ledger`), and the identity it authenticates is neither
who runs the demo nor the run's author. Anything else is one line, exit 2.
"""

from __future__ import annotations

import os
from typing import Any

from dpgov.errors import UsageError
from dpgov.identity import Identity, acting_identity
from dpgov.ledger import Ledger
from dpgov.ledger.schema import entries_t
from dpgov.redaction import redact

APPROVER_LEDGER_ENV = "DPGOV_APPROVER_LEDGER_URL"


def approver_url() -> str | None:
    """The approver's ledger URL from the environment, or None (the single-user demo)."""
    return os.environ.get(APPROVER_LEDGER_ENV) or None


def _pg_location(ledger: Ledger) -> tuple[Any, ...]:
    """Where a PostgreSQL ledger's entries table is: database, server, and the table's oid as
    this connection's search path resolves it (two schemas of one database differ)."""
    import sqlalchemy as sa

    with ledger.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT current_database(), inet_server_addr()::text, inet_server_port(), "
                "to_regclass(:table)::oid"
            ),
            {"table": entries_t.name},
        ).one()
    return tuple(row)


def same_ledger(ledger: Ledger, other: Ledger) -> bool:
    """Whether ``other`` is ``ledger`` reached through another connection: the newest entry
    of ``ledger`` is in ``other``'s chain with the same hash, and for PostgreSQL both resolve
    the entries table to the same table of the same database and server."""
    if ledger.dialect != other.dialect:
        return False
    if ledger.dialect == "postgresql" and _pg_location(ledger) != _pg_location(other):
        return False
    seq, digest = ledger.head()
    if seq == 0:
        return other.head()[0] == 0
    return any(e.seq == seq and e.hash == digest for e in other.entries(since_seq=seq - 1))


def open_approver(
    ledger: Ledger, url: str, *, author: str | None = None
) -> tuple[Ledger, Identity]:
    """The approver's connection to ``ledger`` and the identity it authenticates; UsageError
    (exit 2, nothing recorded) when ``url`` reaches another ledger or the same identity as who
    acts on ``ledger`` (or as ``author``, the run's)."""
    shown = redact(url)
    approver = Ledger.open(url)
    try:
        if not same_ledger(ledger, approver):
            raise UsageError(
                f"--approver-ledger-url {shown} reaches another ledger than the demo's "
                f"(DPGOV_LEDGER_URL): the approval must be recorded on the ledger it releases "
                "from (the same database and schema, as another role)"
            )
        who = acting_identity(approver)
        mine = acting_identity(ledger)
        if who.name in {mine.name, author}:
            raise UsageError(
                f"--approver-ledger-url {shown} authenticates {who.name} ({who.method}), "
                f"who also runs the demo: a second identity must differ (another PostgreSQL "
                "role; with MLflow auth, MLFLOW_TRACKING_USERNAME decides who acts on every "
                "connection)"
            )
    except BaseException:
        approver.close()
        raise
    return approver, who
