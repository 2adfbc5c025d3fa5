"""`dpgov demo` as a new team reads it (issue 22, items 1 and 4): the whole output at 80
columns (the width of piped output), and its release approved by a second authenticated
identity where one exists: the demo's PostgreSQL ledger reached as another role
(`--approver-ledger-url`), so the release policy keeps `approvals.allow_author: false`.

Real PostgreSQL at 127.0.0.1:5432: a fresh schema holds the ledger (as `postgres`), and a
role made for the test, allowed only to read and append there, approves; both are removed
afterwards."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.cli import run_dpgov
from tests.integration.orchestration import harness


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    yield from harness.session()


@pytest.fixture
def approver(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A login role that may read and append to the ledger's schema (the privileges a
    deployment grants an approver: docs/gate.md), and its URL to the same ledger."""
    import sqlalchemy as sa

    role = f"approver{uuid.uuid4().hex[:10]}"  # an identity name: no underscore
    url = make_url(postgres_url)
    schema = str(url.query["options"]).split("search_path=")[1]
    admin = sa.create_engine(url.set(query={}))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(
            sa.text(
                f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" GRANT SELECT, INSERT ON TABLES '
                f'TO "{role}"'
            )
        )
    yield role, url.set(username=role).render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP OWNED BY "{role}"'))  # its default privileges
        conn.execute(sa.text(f'DROP ROLE "{role}"'))
    admin.dispose()


@pytest.fixture
def cli(monkeypatch, capsys, home, postgres_url, tmp_path):
    monkeypatch.setenv("DPGOV_LEDGER_URL", postgres_url)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("DPGOV_APPROVER_LEDGER_URL", raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args, prefect_defaults=True)

    return run


def fits(text: str) -> list[str]:
    """Every line within 80 columns, and nothing cut but the policy's hash (shown short)."""
    lines = text.splitlines()
    assert lines
    for line in lines:
        assert len(line.rstrip()) <= 80, line
        assert "…" not in line or "sha256" in line, line
    return lines


def _nothing_charged() -> None:
    from dpgov.ledger import Ledger

    ledger = Ledger.open()
    try:
        assert ledger.entries("reservation") == []
    finally:
        ledger.close()


def test_the_demo_refuses_an_approver_who_is_not_a_second_identity_on_its_ledger(
    cli, approver, postgres_url: str
) -> None:
    _, url = approver
    # the same role as the demo's own connection: not a second identity
    rc, out, err = cli("demo", "--approver-ledger-url", postgres_url)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "authenticates postgres (postgresql-role), who also runs the demo" in err
    # another role, but another ledger (the database's default schema): refused before it
    # could record anything there
    elsewhere = make_url(url).set(query={}).render_as_string(hide_password=False)
    rc, _, err = cli("demo", "--approver-ledger-url", elsewhere)
    assert rc in (1, 2) and len(err.strip().splitlines()) == 1, err
    rc, _, err = cli("demo", "--waves", "2", "--approver-ledger-url", url)
    assert rc == 2 and "--waves" in err and len(err.strip().splitlines()) == 1
    _nothing_charged()


def test_the_demo_at_80_columns_released_by_a_second_identity(
    cli, approver, prefect_api: str
) -> None:
    pytest.importorskip("sksurv", reason="the demo data needs the demo extra")
    from dpgov.gate.in_force import policy_in_force
    from dpgov.ledger import Ledger

    role, url = approver
    rc, out, err = cli("demo", "--approver-ledger-url", url)
    assert rc == 0, err
    # the URL reached the flow through the environment and left it afterwards (a later command
    # in the same process would otherwise approve as a role that may be gone)
    assert "DPGOV_APPROVER_LEDGER_URL" not in os.environ
    lines = fits(out)
    flat = " ".join(out.split())  # the prose as read, whatever the wrapping
    # the run's tables are dpgov's compact ones: one line per subgroup, one per check at least
    header = next(ln for ln in lines if ln.startswith("attribute "))
    assert header.split() == [
        *("attribute", "group", "n", "pos", "AUROC", "[95%", "CI]", "FNR", "[95%", "CI]")
    ]
    assert not any(ch in out for ch in "┃│┏└"), "a bordered table"
    assert sum(ln.startswith(("sex ", "age_band ")) for ln in lines) == 6
    gates = [i for i, ln in enumerate(lines) if ln.startswith("gate: dpgov-flchain version")]
    assert len(gates) == 2  # blocked under the packaged policy, then judged under the release's
    assert "approvals: a second authenticated identity approves: " + role in flat

    ledger = Ledger.open()
    try:
        loaded = policy_in_force(ledger, "flchain")
        assert loaded.policy.approvals.allow_author is False  # kept: a second identity approves
        entries = ledger.entries("approval")
        reservations = ledger.entries("reservation")
    finally:
        ledger.close()
    assert len(reservations) == 1
    if "release: shipped" in out:
        [entry] = entries
        assert entry.actor == role and entry.payload["authenticated_by"] == "postgresql-role"
        assert entry.payload["author"] == "postgres" != role
        assert f"approved by {role} (postgresql-role, not the author postgres;" in flat
        assert f"statement: approved by {role}" in flat
        assert "no second person reviewed" not in flat
    else:  # noise can fail a check no approval passes: then nothing was approved
        assert entries == [] and "release: not shipped: blocked by " in flat
    assert "audit: CLEAN, 0 findings" in flat
    # the FNR checks: the absolute gaps off with the reason recorded, the widening on
    assert "fnr_gap:sex, fnr_gap:age_band off in policy (why: above)" in flat
    assert "fnr_gap_widening:age_band on, limit 0.05" in flat
    rc, text, err = cli("policy", "show", "--dataset", "flchain", "--json")
    assert rc == 0, err
    assert "approved by a second authenticated identity" in json.loads(text)["reason"]
