"""Attacks on the chain itself, on SQLite and on PostgreSQL: stripping the signatures, cutting
the tail, TRUNCATE, the roles; and the keys' and backups' round trips.

Each attack is played as someone who can write the ledger's database but holds neither the
key nor the anchor stores: on SQLite with the file at hand (the triggers dropped first), on
PostgreSQL as the tables' owner (the triggers disabled). Each test fails if its protection is
taken away: the same attack passed ``ledger verify`` and the audit before (issue 14).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dpgov.accounting import DpSgdMechanism
from dpgov.errors import Refused, UsageError
from dpgov.ledger import Ledger
from dpgov.ledger.chain import canonical, entry_hash, fingerprint, verify_chain
from dpgov.ledger.snapshot import entry_rows
from dpgov.policy.schema import Budget
from dpgov.testing.policies import put_in_force
from tests.cli import run_dpgov
from tests.conftest import REPO

KEY = "k" * 40
NEW_KEY = "n" * 40
BUDGET = Budget(epsilon_per_block=8.0, delta=1e-5)
RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.05, steps=100)
SMALL = DpSgdMechanism(noise_multiplier=5.0, sample_rate=0.01, steps=10)  # fits what is left


@pytest.fixture
def env(home: Path, ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ledger at ``ledger_url``, an MLflow anchor store in the home, an anchor file on
    "another volume"; returns the anchor file."""
    anchors = tmp_path / "other-volume" / "ledger.anchors"
    anchors.parent.mkdir()
    monkeypatch.setenv("DPGOV_LEDGER_URL", ledger_url)
    monkeypatch.setenv("DPGOV_LEDGER_ANCHOR_FILE", str(anchors))
    monkeypatch.setenv("DPGOV_AUDIT_WORKERS", "1")
    monkeypatch.delenv("DPGOV_LEDGER_HMAC_OLD_KEYS", raising=False)
    return anchors


def dpgov(monkeypatch, capsys, *args: str) -> tuple[int, Any, str]:
    code, out, err = run_dpgov(monkeypatch, capsys, *args)
    try:
        return code, json.loads(out), err
    except ValueError:
        return code, out, err


def populate(monkeypatch, capsys) -> str:
    """A block, a committed run and a pending reservation, through the command line (so each
    append is anchored as in a deployment). Returns the pending reservation's id."""
    for args in (
        ("ledger", "add-block", "--dataset", "d", "--block", "b1", "--patients", "400"),
        (
            "ledger",
            "reserve",
            "--dataset",
            "d",
            "--block",
            "b1",
            "--noise-multiplier",
            "1.0",
            "--sample-rate",
            "0.05",
            "--steps",
            "100",
            "--json",
        ),
    ):
        code, out, err = dpgov(monkeypatch, capsys, *args)
        assert code == 0, err
    code, _, err = dpgov(monkeypatch, capsys, "ledger", "commit", out["reservation"])
    assert code == 0, err
    code, out, err = dpgov(
        monkeypatch, capsys, "ledger", "reserve", "--dataset", "d", "--block", "b1",
        "--noise-multiplier", "1.0", "--sample-rate", "0.05", "--steps", "100", "--json",
    )  # fmt: skip
    assert code == 0, err
    return str(out["reservation"])


def as_attacker(led: Ledger, *statements: str, **params: Any) -> None:
    """SQL behind dpgov's back, with the append-only triggers out of the way."""
    with led.engine.begin() as conn:
        if led.dialect == "sqlite":
            for op in ("update", "delete"):
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS dpgov_entries_no_{op}")
        else:
            conn.exec_driver_sql("ALTER TABLE dpgov_entries DISABLE TRIGGER USER")
        for s in statements:
            conn.execute(sa.text(s), params)
        if led.dialect != "sqlite":
            conn.exec_driver_sql("ALTER TABLE dpgov_entries ENABLE TRIGGER USER")


def rows(led: Ledger) -> list[tuple[Any, ...]]:
    with led.engine.connect() as conn:
        return entry_rows(conn)


def rewrite(led: Ledger, keep: list[tuple[Any, ...]]) -> None:
    """Replace the whole chain with ``keep`` (seq renumbered, every hash recomputed, no
    signature): a chain that verifies, forged without the key."""
    as_attacker(led, "DELETE FROM dpgov_entries")
    prev = "0" * 64
    for seq, (_, kind, payload, time, actor, *_rest) in enumerate(keep, start=1):
        digest = entry_hash(
            seq=seq, kind=kind, payload=json.loads(payload), time=time, actor=actor, prev_hash=prev
        )
        as_attacker(
            led,
            "INSERT INTO dpgov_entries (seq, kind, payload, time, actor, prev_hash, hash) "
            "VALUES (:s, :k, :p, :t, :a, :prev, :h)",
            s=seq, k=kind, p=payload, t=time, a=actor, prev=prev, h=digest,
        )  # fmt: skip
        prev = digest


def audit_kinds(monkeypatch, capsys, *extra: str) -> dict[str, dict[str, Any]]:
    code, report, err = dpgov(monkeypatch, capsys, "audit", "--json", *extra)
    assert isinstance(report, dict), err
    assert code == (0 if report["ok"] else 1)
    return {f["kind"]: f for f in report["findings"]}


# ------------------------------------------------------------------------------ signatures


def test_stripping_every_signature_fails_verify_with_or_without_the_key(env, monkeypatch, capsys):
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    populate(monkeypatch, capsys)
    led = Ledger.open()
    assert rows(led)[0][1] == "signing_enabled"  # the first append with a key enrolled it
    assert json.loads(rows(led)[0][2])["key"] == fingerprint(KEY.encode())
    assert KEY not in json.dumps([r[2] for r in rows(led)])  # the fingerprint, never the key
    as_attacker(led, "UPDATE dpgov_entries SET signature = NULL")
    result = led.verify()
    assert not result.ok and result.first_bad_seq == 1 and "unsigned" in result.reason
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 1 and out["chain_ok"] is False
    with pytest.raises(Refused, match="is unsigned"):  # no new signature vouches for it
        led.reserve(dataset="d", blocks=["b1"], mechanism=SMALL, budget=BUDGET)
    monkeypatch.delenv("DPGOV_LEDGER_HMAC_KEY")  # the presence of signatures needs no key
    assert not Ledger.open().verify().ok
    assert "chain_broken" in audit_kinds(monkeypatch, capsys)


def test_a_chain_rewritten_without_its_enrollment_is_caught_and_said_to_be_unsigned(
    env, monkeypatch, capsys
):
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    populate(monkeypatch, capsys)
    led = Ledger.open()
    rewrite(led, [r for r in rows(led) if r[1] != "signing_enabled"])
    result = led.verify()
    assert result.ok and result.signatures == "none" and result.key_given
    assert "never enrolled" in result.signature_note()
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 1 and out["chain_ok"] is True
    assert any("rewritten" in f for f in out["failures"])  # the anchors hold the old hashes
    assert "never enrolled" in out["signatures"]["note"]
    found = audit_kinds(monkeypatch, capsys)
    assert {"ledger_unsigned", "anchor_mismatch"} <= set(found)


def test_without_a_key_verify_says_signatures_were_not_checked_and_a_policy_can_require_them(
    env, monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    populate(monkeypatch, capsys)
    monkeypatch.delenv("DPGOV_LEDGER_HMAC_KEY")
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify")
    assert code == 0 and "signatures NOT checked" in out
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        (REPO / "policies" / "default.yaml").read_text() + "\nledger:\n  require_signatures: true\n"
    )
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)  # a signed ledger: the set is signed too
    put_in_force(strict)
    monkeypatch.delenv("DPGOV_LEDGER_HMAC_KEY")
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 1 and "requires signatures" in out["failures"][-1]
    assert "signatures_unchecked" in audit_kinds(monkeypatch, capsys)
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify")
    assert code == 0 and "signatures checked" in out


def test_appending_without_the_key_or_with_another_key_is_refused_and_writes_nothing(
    ledger_url, monkeypatch
):
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    led = Ledger.open(ledger_url)
    led.add_block(dataset="d", block="b1", patients=400)
    before = len(rows(led))
    monkeypatch.delenv("DPGOV_LEDGER_HMAC_KEY")
    with pytest.raises(UsageError, match="signs every entry since entry 1"):
        led.append(kind="note", payload={})
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", "another-key-" + "x" * 30)
    with pytest.raises(UsageError, match="is not this ledger's signing key"):
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET)
    assert len(rows(led)) == before and led.reservations() == []


def test_a_ledger_signed_before_keys_were_enrolled_still_verifies_and_then_enrolls(
    ledger_url, monkeypatch
):
    """Entries written before this change (signed, no signing_enabled entry) keep their
    meaning; the next append with the key enrolls it, and from then on stripping fails."""
    led = Ledger.open(ledger_url)
    prev, key = "0" * 64, KEY.encode()
    from dpgov.ledger.chain import sign

    for seq in (1, 2):
        payload = {"n": seq}
        digest = entry_hash(
            seq=seq, kind="note", payload=payload, time="t", actor="a", prev_hash=prev
        )
        with led.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO dpgov_entries (seq, kind, payload, time, actor, prev_hash, hash, "
                    "signature) VALUES (:s, 'note', :p, 't', 'a', :prev, :h, :sig)"
                ),
                dict(s=seq, p=canonical(payload), prev=prev, h=digest, sig=sign(digest, key)),
            )
        prev = digest
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    old = led.verify()
    assert old.ok and old.signatures == "legacy" and old.legacy_signed == 2
    led.append(kind="note", payload={"n": 3})
    now = led.verify()
    assert now.ok and now.signing_seq == 3 and now.signatures == "checked"
    as_attacker(led, "UPDATE dpgov_entries SET signature = NULL WHERE seq >= 3")
    assert not led.verify().ok


# ------------------------------------------------------------------------------ the tail


def test_cutting_the_tail_after_the_newest_anchor_fails_verify_refuses_reserve_and_is_found(
    env, monkeypatch, capsys
):
    pending = populate(monkeypatch, capsys)
    led = Ledger.open()
    head = rows(led)[-1][0]
    # the attacker deletes the pending reservation (and its projection rows): budget is freed
    as_attacker(
        led,
        "DELETE FROM dpgov_entries WHERE seq = :s",
        "DELETE FROM dpgov_charges WHERE reservation_id = :r",
        "DELETE FROM dpgov_reservations WHERE id = :r",
        s=head,
        r=pending,
    )
    assert led.verify().ok  # the chain alone cannot see a cut tail
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 1 and out["chain_ok"] is True
    kinds = {p["kind"] for p in out["anchors"]["problems"]}
    assert kinds == {"tail_missing"} and out["anchors"]["sources"] == {
        "file": 4,
        "tracking store": 4,
    }
    with pytest.raises(Refused, match="tail was cut"):  # the anchor file stops the ledger
        led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET)
    found = audit_kinds(monkeypatch, capsys)
    assert found["ledger_truncated"]["seq"] == head


def test_the_cut_tail_is_found_through_each_anchor_store_alone(env, monkeypatch, capsys):
    populate(monkeypatch, capsys)
    led = Ledger.open()
    head = rows(led)[-1][0]
    as_attacker(led, "DELETE FROM dpgov_entries WHERE seq = :s", s=head)
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--no-tracking", "--json")
    assert code == 1 and out["anchors"]["sources"] == {"file": 4}
    monkeypatch.delenv("DPGOV_LEDGER_ANCHOR_FILE")
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 1 and out["anchors"]["sources"] == {"tracking store": 4}
    assert out["anchors"]["problems"][0]["kind"] == "tail_missing"


def test_truncate_is_refused_on_postgres_even_for_the_owner_and_a_forced_one_is_found(
    env, ledger_url, monkeypatch, capsys
):
    if not ledger_url.startswith("postgresql"):
        pytest.skip("TRUNCATE is PostgreSQL's")
    populate(monkeypatch, capsys)
    led = Ledger.open()
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), led.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE dpgov_entries CASCADE")
    assert len(rows(led)) == 4
    with led.engine.begin() as conn:  # the owner disables the triggers first
        conn.exec_driver_sql("ALTER TABLE dpgov_entries DISABLE TRIGGER USER")
        conn.exec_driver_sql("TRUNCATE dpgov_entries")
        conn.exec_driver_sql("ALTER TABLE dpgov_entries ENABLE TRIGGER USER")
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 1 and out["anchors"]["problems"][0]["kind"] == "tail_missing"


@pytest.fixture
def roles(postgres_url: str) -> dict[str, str]:
    """Owner, application and auditor roles, set up by scripts/postgres_roles.sql."""
    tag = uuid.uuid4().hex[:8]
    names = {r: f"dpgov_{r}_{tag}" for r in ("owner", "app", "auditor")}
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        for name in names.values():
            conn.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN')
    yield names
    with admin.begin() as conn:
        for name in names.values():
            conn.exec_driver_sql(f'DROP OWNED BY "{name}" CASCADE')
            conn.exec_driver_sql(f'DROP ROLE "{name}"')
    admin.dispose()


def as_role(url: str, role: str) -> str:
    return sa.make_url(url).set(username=role).render_as_string(hide_password=False)


def test_the_application_role_may_append_but_never_update_delete_or_truncate(postgres_url, roles):
    if shutil.which("psql") is None:
        pytest.skip("the role script runs through psql, which is not installed")
    led = Ledger.open(postgres_url)  # created once, by the owner (here the superuser)
    led.add_block(dataset="d", block="b1", patients=400)
    url = sa.make_url(postgres_url)
    schema = url.query["options"].split("=", 1)[1]
    subprocess.run(
        [
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host or "127.0.0.1",
            "-p", str(url.port or 5432), "-U", url.username or "postgres", "-d", url.database,
            "-v", f"schema={schema}", "-v", f"owner={roles['owner']}",
            "-v", f"app={roles['app']}", "-v", f"auditor={roles['auditor']}",
            "-f", str(REPO / "scripts" / "postgres_roles.sql"),
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    app = Ledger.open(as_role(postgres_url, roles["app"]))
    res = app.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET)
    app.commit(res.id)
    app.retire_block(dataset="d", block="b1", reason="spent")
    assert app.verify().ok and len(rows(app)) == 4
    for statement in (
        "UPDATE dpgov_entries SET actor = 'mallory'",
        "DELETE FROM dpgov_entries",
        "TRUNCATE dpgov_entries",
        "ALTER TABLE dpgov_entries DISABLE TRIGGER USER",
        "DROP TRIGGER dpgov_entries_append_only ON dpgov_entries",
        "TRUNCATE dpgov_reservations",
    ):
        with (
            pytest.raises(sa.exc.ProgrammingError, match=r"permission denied|must be owner"),
            app.engine.begin() as conn,
        ):
            conn.exec_driver_sql(statement)
    auditor = Ledger.open(as_role(postgres_url, roles["auditor"]))
    assert auditor.verify().ok
    with pytest.raises(Refused, match="may not write"):
        auditor.append(kind="note", payload={})
    for each in (app, auditor, led):
        each.close()


# ------------------------------------------------------------------------------ keys


def test_rotation_is_chained_signed_by_the_old_key_and_each_key_verifies_its_range(
    env, monkeypatch, capsys
):
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    populate(monkeypatch, capsys)
    monkeypatch.setenv("DPGOV_LEDGER_NEW_HMAC_KEY", NEW_KEY)
    code, out, err = dpgov(monkeypatch, capsys, "ledger", "rotate-key", "--json")
    assert code == 0, err
    assert out["previous"] == fingerprint(KEY.encode()) and out["key"] == fingerprint(
        NEW_KEY.encode()
    )
    led = Ledger.open()
    with pytest.raises(UsageError, match="rotate-key"):  # the old key signs no more
        led.append(kind="note", payload={})
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", NEW_KEY)
    led.append(kind="note", payload={"after": "rotation"})
    partial = led.verify()
    assert partial.ok and partial.signatures == "partial" and partial.unchecked == 6
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_OLD_KEYS", KEY)
    full = led.verify()
    assert (
        full.ok
        and full.signatures == "checked"
        and [k.kind for k in full.key_events]
        == [
            "signing_enabled",
            "key_rotated",
        ]
    )
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "keys", "--json")
    assert code == 0 and out["key_set_signs"] is True
    # the rotation entry was signed by the old key: re-signed with the new one, it fails
    from dpgov.ledger.chain import sign

    rot = next(r for r in rows(led) if r[1] == "key_rotated")
    as_attacker(
        led, "UPDATE dpgov_entries SET signature = :sig WHERE seq = :s",
        sig=sign(rot[6], NEW_KEY.encode()), s=rot[0],
    )  # fmt: skip
    bad = led.verify()
    assert not bad.ok and bad.first_bad_seq == rot[0]


def test_a_short_new_key_is_one_line_exit_2(env, monkeypatch, capsys):
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    monkeypatch.setenv("DPGOV_LEDGER_NEW_HMAC_KEY", "short")
    code, _, err = run_dpgov(monkeypatch, capsys, "ledger", "rotate-key")
    assert code == 2 and err.count("\n") == 1 and "at least 32 characters" in err


# ------------------------------------------------------------------------------ recovery


def test_a_restored_ledger_is_told_apart_from_a_cut_tail(
    env, ledger_url, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    populate(monkeypatch, capsys)
    backup = tmp_path / "ledger.backup"
    code, out, err = dpgov(monkeypatch, capsys, "ledger", "backup", str(backup), "--json")
    assert code == 0, err
    backup_head = out["head_seq"]
    led = Ledger.open()
    led.append(kind="note", payload={"after": "the backup"})  # anchored, then lost
    lost_head = rows(led)[-1][0]
    # disaster: the database is gone; a fresh one is restored from the backup
    fresh = (
        f"sqlite:///{tmp_path / 'restored.db'}" if ledger_url.startswith("sqlite") else ledger_url
    )
    if not ledger_url.startswith("sqlite"):
        with led.engine.begin() as conn:
            for t in (
                "dpgov_charges",
                "dpgov_reservations",
                "dpgov_blocks",
                "dpgov_composition_cache",
            ):
                conn.exec_driver_sql(f"DELETE FROM {t}")
            conn.exec_driver_sql("ALTER TABLE dpgov_entries DISABLE TRIGGER USER")
            conn.exec_driver_sql("DELETE FROM dpgov_entries")
            conn.exec_driver_sql("ALTER TABLE dpgov_entries ENABLE TRIGGER USER")
    monkeypatch.setenv("DPGOV_LEDGER_URL", fresh)
    code, out, err = dpgov(
        monkeypatch, capsys, "ledger", "restore", str(backup), "--reason", "disk lost", "--json"
    )
    assert code == 0, err
    assert out["backup_seq"] == backup_head and out["lost_through"] == lost_head
    assert out["seq"] == lost_head + 1  # no anchored seq is reused
    restored = Ledger.open()
    result = restored.verify()
    assert result.ok and result.signatures == "checked"
    assert [(r.backup_seq, r.lost_through) for r in result.restores] == [(backup_head, lost_head)]
    code, out, err = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 0, (out, err)  # the lost anchors are declared, not a cut
    restored.append(kind="note", payload={"after": "the restore"})  # anchored without conflict
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 0 and out["anchors"]["problems"] == []
    found = audit_kinds(monkeypatch, capsys)
    assert "ledger_truncated" not in found and "anchor_mismatch" not in found
    assert found["ledger_restored"]["seq"] == lost_head + 1
    assert f"entries {backup_head + 1}..{lost_head}" in found["ledger_restored"]["detail"]
    # the same loss without the restored entry is a cut tail
    as_attacker(restored, "DELETE FROM dpgov_entries WHERE seq > :s", s=backup_head)
    code, out, _ = dpgov(monkeypatch, capsys, "ledger", "verify", "--json")
    assert code == 1 and out["anchors"]["problems"][0]["kind"] == "tail_missing"


def test_restoring_into_a_ledger_that_holds_entries_or_from_a_foreign_backup_is_refused(
    env, tmp_path, monkeypatch, capsys
):
    populate(monkeypatch, capsys)
    backup = tmp_path / "ledger.backup"
    assert dpgov(monkeypatch, capsys, "ledger", "backup", str(backup))[0] == 0
    code, _, err = dpgov(monkeypatch, capsys, "ledger", "restore", str(backup), "--reason", "x")
    assert code == 2 and "already holds entries" in err
    lines = backup.read_text().splitlines()
    forged = [json.loads(x) for x in lines]
    first = next(x for x in forged if x.get("table") == "dpgov_entries")
    first["row"]["actor"] = "mallory"  # an altered backup breaks its own chain
    backup.write_text("\n".join(json.dumps(x) for x in forged) + "\n")
    monkeypatch.setenv("DPGOV_LEDGER_URL", f"sqlite:///{tmp_path / 'other.db'}")
    code, _, err = dpgov(monkeypatch, capsys, "ledger", "restore", str(backup), "--reason", "x")
    assert code == 1 and "does not verify at entry 1" in err
    assert rows(Ledger.open()) == []  # nothing was written


def test_a_backup_verifies_as_the_chain_it_copies(ledger_url, tmp_path, monkeypatch):
    from dpgov.ledger.recovery import backup, read_backup

    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", KEY)
    led = Ledger.open(ledger_url)
    led.add_block(dataset="d", block="b1", patients=400)
    res = led.reserve(dataset="d", blocks=["b1"], mechanism=RUN, budget=BUDGET)
    led.commit(res.id)
    info = backup(led.engine, tmp_path / "b.jsonl")
    copy = read_backup(tmp_path / "b.jsonl")
    assert copy.entry_rows() == [tuple(r) for r in rows(led)]
    v = verify_chain(iter(copy.entry_rows()), KEY.encode())
    assert v.ok and v.head == info.head_hash and v.signatures == "checked"
    assert len(copy.rows["dpgov_charges"]) == 1 and "dpgov_composition_cache" not in copy.rows


def test_ledgers_sharing_an_anchor_file_each_check_their_own_lines(
    ledger_url, tmp_path, monkeypatch
):
    monkeypatch.setenv("DPGOV_LEDGER_ANCHOR_FILE", str(tmp_path / "shared.anchors"))
    a, b = Ledger.open(ledger_url), Ledger.open(f"sqlite:///{tmp_path / 'site-b.db'}")
    for led in (a, b, a, b, b):  # federated sites in one process
        led.append(kind="note", payload={})
    as_attacker(a, "DELETE FROM dpgov_entries WHERE seq = 2")
    with pytest.raises(Refused, match="tail was cut"):
        a.append(kind="note", payload={})
    b.append(kind="note", payload={})  # the other ledger's lines are not its own
    assert len(rows(b)) == 4
