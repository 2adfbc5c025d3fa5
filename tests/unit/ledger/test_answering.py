"""How the ledger's database errors reach users (dpgov.ledger.database.answering): a
connection that broke mid-command is unavailability (exit 2), other programming errors are
raised as they are. The errors are psycopg's own, wrapped by SQLAlchemy as in a real failure
(the full path, a PostgreSQL cut by a proxy, is tests/integration/reliability/test_faults.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dpgov.errors import LedgerUnavailable
from dpgov.ledger.database import answering

psycopg = pytest.importorskip("psycopg")
ENGINE = sa.create_engine("sqlite://")


def _wrapped(orig: Exception) -> sa.exc.ProgrammingError:
    return sa.exc.ProgrammingError("SELECT 1", {}, orig)


def test_a_connection_left_mid_command_is_unavailability() -> None:
    orig = psycopg.ProgrammingError(
        "can't change 'autocommit' now: connection in transaction status ACTIVE"
    )
    broke = "does not answer: its connection broke"
    with pytest.raises(LedgerUnavailable, match=broke), answering(ENGINE):
        raise _wrapped(orig)


def test_any_other_programming_error_is_raised_as_it_is() -> None:
    wrong = psycopg.ProgrammingError("the query has 2 placeholders but 1 parameter")
    with pytest.raises(sa.exc.ProgrammingError), answering(ENGINE):
        raise _wrapped(wrong)
