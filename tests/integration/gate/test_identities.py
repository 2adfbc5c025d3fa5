"""Second identities that are real: an OS user created here, PostgreSQL roles with passwords.

OS user: the command runs in a process whose real uid is a user created with ``useradd``
(root only; skipped otherwise). Its effective uid stays root so that it can read the
interpreter under /root in this container; dpgov reads the real uid (``os.getuid``), which is
what identifies the user. PostgreSQL: roles created with passwords, each connecting with its
own password URL; the identity is the server's ``current_user`` (pg_hba here trusts
127.0.0.1, so the test checks the role name the server reports, not the password check).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from gate_factories import MODEL

from dpgov.identity import acting_identity


@pytest.fixture
def os_user():
    if os.geteuid() != 0:
        pytest.skip("creating an OS user needs root")
    name = f"dpgovt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True)
    import pwd

    yield name, pwd.getpwnam(name).pw_uid
    subprocess.run(["userdel", name], check=False)


def run_as(uid: int, env_vars: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    code = (
        f"import os, sys; os.setresuid({uid}, 0, 0); from dpgov.cli import main; "
        "sys.argv = ['dpgov', *sys.argv[1:]]; main()"
    )
    env = {**os.environ, **env_vars, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_dpgov_actor_bob_run_by_another_os_user_does_not_count_as_bob(env, os_user):
    name, uid = os_user
    version, _ = env.register()
    env_vars = {"DPGOV_HOME": str(env.home), "DPGOV_ACTOR": "bob"}
    r = run_as(uid, env_vars, "approve", MODEL, version, "--by", "bob")
    assert r.returncode == 2, r.stderr
    assert f"not who acts: the deployment authenticates '{name}' (os-user)" in r.stderr
    assert env.entries("approval") == []
    r = run_as(uid, env_vars, "approve", MODEL, version, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["identity"] == name
    (entry,) = env.entries("approval")
    assert entry.payload["identity"] == entry.actor == name
    assert entry.payload["authenticated_by"] == "os-user"


@pytest.fixture
def roles(postgres_url):
    """Two login roles with passwords on the test schema; their password URLs."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url)
    schema = postgres_url.rsplit("search_path%3D", 1)[1]
    made = []
    with admin.begin() as conn:
        for who in ("alice", "bob"):
            role = f"dpgov_{who}_{uuid.uuid4().hex[:6]}"
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{who}'"))
            conn.execute(sa.text(f'GRANT ALL ON SCHEMA "{schema}" TO {role}'))
            made.append(role)
    urls = [
        sa.make_url(postgres_url).set(username=r, password=f"pw-{w}").render_as_string(False)
        for r, w in zip(made, ("alice", "bob"), strict=True)
    ]
    yield made, urls, admin, schema
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        for r in made:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {r}"))
    admin.dispose()


def test_a_postgresql_ledger_acts_as_its_role(roles, monkeypatch):
    import sqlalchemy as sa

    from dpgov.ledger import Ledger

    (alice, bob), (alice_url, bob_url), admin, schema = roles
    monkeypatch.setenv("DPGOV_ACTOR", "mallory")  # a label: never who acts
    as_bob = Ledger.open(bob_url)  # creates the tables (bob owns them)
    with admin.begin() as conn:
        conn.execute(sa.text(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO {alice}'))
        conn.execute(sa.text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO {alice}'))
    as_alice = Ledger.open(alice_url)
    try:
        who = acting_identity(as_alice)
        assert (who.name, who.method) == (alice, "postgresql-role")
        assert "pw-alice" not in who.where
        assert acting_identity(as_bob).name == bob
    finally:
        as_alice.close()
        as_bob.close()


def test_approvals_on_a_postgresql_ledger_record_the_role(roles, env, cli, monkeypatch):
    """The author binds as bob's role; alice's role approves; --by bob over alice's connection
    is refused."""
    import sqlalchemy as sa

    from dpgov.ledger import Ledger

    (alice, bob), (alice_url, bob_url), admin, schema = roles
    env.ledger.close()
    env.ledger = Ledger.open(bob_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO {alice}'))
        conn.execute(sa.text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO {alice}'))
    for b in ("1995", "1996"):
        env.ledger.add_block(dataset="flchain", block=b, patients=1000)
    version, _ = env.register()
    assert env.entries("facts_bound")[0].payload["author"] == bob
    monkeypatch.setenv("DPGOV_LEDGER_URL", alice_url)
    r = cli("approve", MODEL, version, "--by", bob, as_="anyone")
    assert r.code == 2 and f"authenticates '{alice}' (postgresql-role)" in r.err
    r = cli("approve", MODEL, version, "--json", as_="anyone")
    assert r.code == 0, r.err
    assert json.loads(r.out)["identity"] == alice
    assert cli("gate", MODEL, version, as_="anyone").code == 0
    monkeypatch.setenv("DPGOV_LEDGER_URL", bob_url)
    r = cli("approve", MODEL, version, "--json", as_="anyone")
    assert r.code == 2 and "author of run" in r.err
