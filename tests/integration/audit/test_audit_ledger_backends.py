"""Ledger faults found by ``dpgov audit`` on SQLite and on PostgreSQL, and a ledger that cannot
be reached (exit 2, one line).

Each test builds a small ledger (two blocks, three committed runs, each commit anchored in a
real MLflow store) on the backend, then damages it with SQL behind dpgov's back.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dpgov.ledger.chain import canonical, entry_hash

HMAC_KEY = "privacy-officer-secret"


@dataclass
class Small:
    url: str
    engine: sa.engine.Engine
    dialect: str
    dvc_root: Path
    policy: Path

    def rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT seq, kind, payload, time, actor, prev_hash, hash FROM dpgov_entries "
                    "ORDER BY seq"
                )
            ).all()
        return [
            {
                "seq": r[0],
                "kind": r[1],
                "payload": json.loads(r[2]),
                "time": r[3],
                "actor": r[4],
                "prev_hash": r[5],
                "hash": r[6],
            }
            for r in rows
        ]

    def sql(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS dpgov_entries_no_update")
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS dpgov_entries_no_delete")
            else:
                conn.exec_driver_sql(
                    "ALTER TABLE dpgov_entries DISABLE TRIGGER dpgov_entries_append_only"
                )
            conn.execute(sa.text(statement), params)


def build(url: str, home: Path, world: Any) -> Small:
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger
    from dpgov.testing.policies import put_in_force
    from dpgov.tracking.anchor import record_anchor

    led = Ledger.open(url)
    loaded = put_in_force(world.policy, ledger=led)  # the world's policy, in force here too
    for b in ("b0", "b1"):
        led.add_block(dataset="synth", block=b, patients=150, data_version=world.data_version)
    for i, blocks in enumerate((["b0"], ["b0", "b1"], ["b1"])):
        res = led.reserve(
            dataset="synth",
            blocks=blocks,
            budget=loaded.policy.budget,
            mechanism=DpSgdMechanism(noise_multiplier=1.5 + i, sample_rate=0.1, steps=10),
            policy_sha256=loaded.sha256,
            data_version=world.data_version,
        )
        entry = led.commit(res.id, steps=10 - i)
        record_anchor(entry.seq, entry.hash, ledger=led)
    engine, dialect = led.engine, led.dialect
    return Small(url, engine, dialect, world.repo, world.policy)


@pytest.fixture
def small(
    ledger_url: str,
    world: Any,
    mlflow_store_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Small:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_store_template, home / "mlflow.db")
    monkeypatch.setenv("DPGOV_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("DPGOV_LEDGER_URL", ledger_url)
    monkeypatch.delenv("DPGOV_LEDGER_HMAC_KEY", raising=False)
    return build(ledger_url, home, world)


def run_audit(
    small_or_none: Small | None, capsys: Any, monkeypatch: Any, *args: str
) -> tuple[int, dict[str, Any] | None, str]:
    from dpgov.cli import main

    argv = ["dpgov", "audit", "--json", *args]
    if small_or_none is not None:
        argv += ["--dvc-root", str(small_or_none.dvc_root)]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def kinds(report: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    assert report is not None
    return {f["kind"]: f for f in report["findings"]}


def test_a_clean_ledger_audits_clean(small, capsys, monkeypatch):
    code, report, err = run_audit(small, capsys, monkeypatch)
    assert code == 0, (report or {}).get("findings", err)
    assert report["anchors"]["matched"] == 3


def test_an_edited_entry_is_found(small, capsys, monkeypatch):
    commit = next(e for e in small.rows() if e["kind"] == "commit")
    small.sql("UPDATE dpgov_entries SET actor = 'mallory' WHERE seq = :s", s=commit["seq"])
    code, report, _ = run_audit(small, capsys, monkeypatch)
    assert code == 1
    assert kinds(report)["chain_broken"]["seq"] == commit["seq"]


def test_a_deleted_entry_is_found(small, capsys, monkeypatch):
    reservation = [e for e in small.rows() if e["kind"] == "reservation"][1]
    small.sql("DELETE FROM dpgov_entries WHERE seq = :s", s=reservation["seq"])
    code, report, _ = run_audit(small, capsys, monkeypatch)
    assert code == 1
    found = kinds(report)
    assert found["chain_broken"]["seq"] == reservation["seq"]
    assert "replay_inconsistent" in found  # its commit now closes a reservation never made


def _rewrite(small: Small, *, from_kind: str = "reservation") -> None:
    """Lower the first charge and recompute every hash after it (no HMAC key)."""
    rows = small.rows()
    start = next(e for e in rows if e["kind"] == from_kind)
    prev = None
    for e in rows:
        if e["seq"] < start["seq"]:
            prev = e["hash"]
            continue
        payload = e["payload"]
        if e["seq"] == start["seq"]:
            payload = dict(payload, mechanism=dict(payload["mechanism"], steps=1), epsilon_run=0.01)
        digest = entry_hash(
            seq=e["seq"],
            kind=e["kind"],
            payload=payload,
            time=e["time"],
            actor=e["actor"],
            prev_hash=prev,
        )
        small.sql(
            "UPDATE dpgov_entries SET payload = :p, prev_hash = :prev, hash = :h, "
            "signature = NULL WHERE seq = :s",
            p=canonical(payload),
            prev=prev,
            h=digest,
            s=e["seq"],
        )
        prev = digest


def test_a_rewritten_chain_is_found_through_the_anchors(small, capsys, monkeypatch):
    _rewrite(small)
    from dpgov.ledger import Ledger

    assert Ledger.open(small.url).verify().ok
    code, report, _ = run_audit(small, capsys, monkeypatch)
    assert code == 1
    found = kinds(report)
    assert "chain_broken" not in found
    assert "rewritten" in found["anchor_mismatch"]["detail"]


def test_a_truncated_ledger_is_found_through_the_anchors(small, capsys, monkeypatch):
    head = small.rows()[-1]["seq"]
    small.sql("DELETE FROM dpgov_entries WHERE seq = :s", s=head)
    code, report, _ = run_audit(small, capsys, monkeypatch)
    assert code == 1
    found = kinds(report)
    assert "chain_broken" not in found
    assert found["ledger_truncated"]["seq"] == head


def test_with_the_hmac_key_a_rewrite_is_found_without_anchors(
    ledger_url, world, mlflow_store_template, tmp_path, capsys, monkeypatch
):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_store_template, home / "mlflow.db")  # an anchor store, but wiped below
    monkeypatch.setenv("DPGOV_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("DPGOV_LEDGER_URL", ledger_url)
    monkeypatch.setenv("DPGOV_LEDGER_HMAC_KEY", HMAC_KEY)
    small = build(ledger_url, home, world)
    shutil.copy(mlflow_store_template, home / "mlflow.db")  # the anchors are gone too
    _rewrite(small)
    code, report, _ = run_audit(small, capsys, monkeypatch)
    assert code == 1
    found = kinds(report)
    assert (
        "HMAC signature" in found["chain_broken"]["detail"]
        or "unsigned" in (found["chain_broken"]["detail"])
    )
    assert report["ledger"]["hmac_key_set"] is True


def test_a_ledger_that_does_not_answer_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPGOV_HOME", str(tmp_path))
    monkeypatch.setenv("DPGOV_LEDGER_URL", "postgresql://dpgov@127.0.0.1:1/none")
    code, report, err = run_audit(None, capsys, monkeypatch)
    assert code == 2 and report is None
    assert err.startswith("error: ledger database") and "does not answer" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_missing_ledger_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPGOV_HOME", str(tmp_path))
    monkeypatch.delenv("DPGOV_LEDGER_URL", raising=False)
    code, _, err = run_audit(None, capsys, monkeypatch)
    assert code == 2 and "does not exist: nothing to audit" in err
    assert not (tmp_path / "ledger.db").exists()
