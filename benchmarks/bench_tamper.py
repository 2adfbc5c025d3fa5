"""Ledger attacks: each one tried for real, on SQLite and on PostgreSQL, and what caught it.

Every scenario builds a fresh ledger through the command line (a block, a committed run and a
pending reservation: every append anchored in a real MLflow store and in an anchor file), plays
one attack as someone who can write the ledger's database (on SQLite with the file at hand, on
PostgreSQL as the tables' owner), then records what ``dpgov ledger verify`` exits, whether a
new ``dpgov ledger reserve`` is refused, and what ``dpgov audit`` finds. Writes
benchmarks/RESULTS_tamper.md.

Run: .venv/bin/python benchmarks/bench_tamper.py [--backends sqlite,postgres]
Needs PostgreSQL on 127.0.0.1:5432 for the PostgreSQL rows (DPGOV_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, stamp

REPO = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get(
    "DPGOV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
KEY = "bench-key-" + "k" * 32
FINDINGS = {  # the findings that point at the attack (others, e.g. the pending reservation, not)
    "chain_broken",
    "anchor_mismatch",
    "ledger_truncated",
    "ledger_unsigned",
    "signatures_unchecked",
    "ledger_restored",
    "projection_mismatch",
}


def dpgov(*args: str) -> tuple[int, Any]:
    """``dpgov ARGS`` in this process (the real entry point); (exit code, JSON or text)."""
    from dpgov.cli import main

    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["dpgov", *args]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    text = out.getvalue()
    try:
        return code, json.loads(text)
    except ValueError:
        return code, text + err.getvalue()


@dataclass
class World:
    url: str
    dialect: str
    home: Path

    def sql(self, *statements: str, triggers_off: bool = True, **params: Any) -> str | None:
        """SQL behind dpgov's back; returns the database's refusal, if any."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.begin() as conn:
                if triggers_off and self.dialect == "sqlite":
                    for op in ("update", "delete"):
                        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS dpgov_entries_no_{op}")
                elif triggers_off:
                    conn.exec_driver_sql("ALTER TABLE dpgov_entries DISABLE TRIGGER USER")
                for s in statements:
                    conn.execute(sa.text(s), params)
                if triggers_off and self.dialect != "sqlite":
                    conn.exec_driver_sql("ALTER TABLE dpgov_entries ENABLE TRIGGER USER")
        except sa.exc.DBAPIError as err:
            return str(err.orig).strip().splitlines()[0]
        finally:
            engine.dispose()
        return None

    def rows(self) -> list[tuple[Any, ...]]:
        import sqlalchemy as sa

        from dpgov.ledger.snapshot import entry_rows

        engine = sa.create_engine(self.url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            out = entry_rows(conn)
        engine.dispose()
        return out

    def rewrite(self, keep: list[tuple[Any, ...]]) -> None:
        """The chain replaced by ``keep``: renumbered, every hash recomputed, unsigned."""
        from dpgov.ledger.chain import entry_hash

        self.sql("DELETE FROM dpgov_entries")
        prev = "0" * 64
        for seq, (_, kind, payload, t, actor, *_rest) in enumerate(keep, start=1):
            digest = entry_hash(
                seq=seq, kind=kind, payload=json.loads(payload), time=t, actor=actor, prev_hash=prev
            )
            self.sql(
                "INSERT INTO dpgov_entries (seq, kind, payload, time, actor, prev_hash, hash) "
                "VALUES (:s, :k, :p, :t, :a, :prev, :h)",
                s=seq, k=kind, p=payload, t=t, a=actor, prev=prev, h=digest,
            )  # fmt: skip
            prev = digest

    def wipe_tracking_anchors(self, template: Path) -> None:
        shutil.copy(template, self.home / "mlflow.db")


def populate() -> str:
    dpgov("ledger", "add-block", "--dataset", "d", "--block", "b1", "--patients", "400")
    reserve = ("ledger", "reserve", "--dataset", "d", "--block", "b1", "--noise-multiplier",
               "1.0", "--sample-rate", "0.05", "--steps", "100", "--json")  # fmt: skip
    code, out = dpgov(*reserve)
    assert code == 0, out
    dpgov("ledger", "commit", out["reservation"])
    code, out = dpgov(*reserve)
    assert code == 0, out
    return str(out["reservation"])


def cut_tail(w: World, pending: str) -> None:
    head = w.rows()[-1][0]
    w.sql(
        "DELETE FROM dpgov_entries WHERE seq = :s",
        "DELETE FROM dpgov_charges WHERE reservation_id = :r",
        "DELETE FROM dpgov_reservations WHERE id = :r",
        "DELETE FROM dpgov_composition_cache",  # recomputed: no trace of the cut charge
        s=head,
        r=pending,
    )


def unenroll(w: World) -> None:
    w.rewrite([r for r in w.rows() if r[1] != "signing_enabled"])


def unenroll_and_wipe(w: World, template: Path) -> None:
    unenroll(w)
    w.wipe_tracking_anchors(template)


def cut_and_wipe(w: World, pending: str, template: Path, *, file_too: bool) -> None:
    cut_tail(w, pending)
    w.wipe_tracking_anchors(template)
    if file_too:
        (w.home / "anchors" / "ledger.anchors").write_text("")


def truncate(w: World, *, triggers_off: bool) -> str | None:
    if w.dialect == "sqlite":
        return "n/a"
    return w.sql("TRUNCATE dpgov_entries", triggers_off=triggers_off)


# name -> (with key?, attack). An attack returns what the database said (a refusal), or None.
Attack = Callable[[World, str, Path], str | None]
ATTACKS: dict[str, tuple[bool, Attack]] = {
    "edit one entry's payload": (
        False,
        lambda w, p, t: w.sql(
            "UPDATE dpgov_entries SET payload = replace(payload, 'epsilon_run', 'epsilon_rux') "
            "WHERE kind = 'reservation'"
        ),
    ),
    "rewrite the chain from an entry on, no key": (
        False,
        lambda w, p, t: w.rewrite([r for r in w.rows() if r[0] != 3]),
    ),
    "strip every signature (key set)": (
        True,
        lambda w, p, t: w.sql("UPDATE dpgov_entries SET signature = NULL"),
    ),
    "strip every signature, rewrite `signing_enabled` away (key set)": (
        True,
        lambda w, p, t: unenroll(w),
    ),
    "… and wipe the tracking store's anchors too (key set)": (
        True,
        lambda w, p, t: unenroll_and_wipe(w, t),
    ),
    "cut the tail: delete the pending reservation after the newest anchor": (
        False,
        lambda w, p, t: cut_tail(w, p),
    ),
    "cut the tail (key set)": (True, lambda w, p, t: cut_tail(w, p)),
    "cut the tail, wipe the tracking store's anchors": (
        False,
        lambda w, p, t: cut_and_wipe(w, p, t, file_too=False),
    ),
    "cut the tail, wipe the tracking anchors and the anchor file": (
        False,
        lambda w, p, t: cut_and_wipe(w, p, t, file_too=True),
    ),
    "`TRUNCATE dpgov_entries` as the owner (PostgreSQL)": (
        False,
        lambda w, p, t: truncate(w, triggers_off=False),
    ),
    "`TRUNCATE` after disabling the triggers, as the owner (PostgreSQL)": (
        False,
        lambda w, p, t: truncate(w, triggers_off=True),
    ),
}


@contextlib.contextmanager
def world(backend: str, template: Path, key: bool) -> Iterator[World]:
    tmp = Path(tempfile.mkdtemp(prefix="dpgov-tamper-"))
    home = tmp / "home"
    home.mkdir()
    (home / "anchors").mkdir()
    shutil.copy(template, home / "mlflow.db")
    schema = None
    if backend == "sqlite":
        url = f"sqlite:///{home / 'ledger.db'}"
    else:
        import sqlalchemy as sa

        schema = f"tamper_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(POSTGRES)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        admin.dispose()
        url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    env = {
        "DPGOV_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "DPGOV_LEDGER_URL": url,
        "DPGOV_LEDGER_ANCHOR_FILE": str(home / "anchors" / "ledger.anchors"),
        "DPGOV_AUDIT_WORKERS": "1",
        "DPGOV_LEDGER_HMAC_KEY": KEY if key else "",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    if not key:
        os.environ.pop("DPGOV_LEDGER_HMAC_KEY")
    try:
        yield World(url, backend, home)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if schema:
            import sqlalchemy as sa

            admin = sa.create_engine(POSTGRES)
            with admin.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


def outcome(backend: str, template: Path, key: bool, attack: Attack) -> dict[str, str]:
    with world(backend, template, key) as w:
        pending = populate()
        said = attack(w, pending, template)
        if said == "n/a":
            return {"verify": "n/a", "reserve": "n/a", "audit": "n/a"}
        code, out = dpgov("ledger", "verify", "--json")
        if code == 0:
            v = "passes"
            if isinstance(out, dict) and out.get("signatures", {}).get("status") == "none" and key:
                v = "passes, says “never enrolled a key”"
        else:
            what = []
            if isinstance(out, dict):
                if not out.get("chain_ok", True):
                    what.append("chain")
                if out.get("tables", {}).get("ok") is False:
                    what.append("tables")
                kinds = {p["kind"] for p in out.get("anchors", {}).get("problems", [])}
                what += sorted(kinds)
            v = f"**exit {code}** ({', '.join(what) or 'see output'})"
        code, out = dpgov(
            "ledger", "reserve", "--dataset", "d", "--block", "b1", "--noise-multiplier", "1.0",
            "--sample-rate", "0.05", "--steps", "100", "--json",
        )  # fmt: skip
        r = "granted" if code == 0 else f"**refused** (exit {code})"
        code, report = dpgov("audit", "--json")
        if isinstance(report, dict):
            kinds = sorted({f["kind"] for f in report["findings"]} & FINDINGS)
            a = ", ".join(f"`{k}`" for k in kinds) if kinds else "nothing about it"
        else:
            a = f"exit {code}"
        if said:
            v = f"database refused it (“{said[:40]}”): nothing changed, {v}"
        return {"verify": v, "reserve": r, "audit": a}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS_tamper.md"))
    args = ap.parse_args()
    os.chdir(REPO)
    for k, v in {"MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1"}.items():
        os.environ.setdefault(k, v)
    from mlflow import MlflowClient

    template = Path(tempfile.mkdtemp(prefix="dpgov-mlflow-")) / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
    started = time.time()
    backends = args.backends.split(",")
    table: dict[str, dict[str, dict[str, str]]] = {}
    for name, (key, attack) in ATTACKS.items():
        for b in backends:
            print(f"{b}: {name}", flush=True)
            table.setdefault(name, {})[b] = outcome(b, template, key, attack)
    lines = [
        f"## Ledger attacks: tried, detected by verify, refused by reserve, found by audit "
        f"({stamp()})",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python benchmarks/bench_tamper.py "
        f"--backends {args.backends}` ({time.time() - started:.0f} s). Each attack on a fresh "
        f"ledger (a block, a committed run, a pending reservation; every append anchored in the "
        f"MLflow store and in an anchor file), played with write access to the ledger's "
        f"database (SQLite: the triggers dropped; PostgreSQL: as the tables' owner). Then "
        f"`dpgov ledger verify`, a new `dpgov ledger reserve` of the same run, `dpgov audit` "
        f"(the findings that point at the attack). Before issue 14, the signature and tail "
        f"attacks passed verify and a clean audit.",
        "",
        "| attack | backend | `ledger verify` | new `reserve` | `audit` finds |",
        "|---|---|---|---|---|",
    ]
    for name, per in table.items():
        for b, o in per.items():
            lines.append(f"| {name} | {b} | {o['verify']} | {o['reserve']} | {o['audit']} |")
    lines += [
        "",
        "The limit: with every anchor store wiped as well (the tracking store's anchors and "
        "the anchor file), a cut tail looks like a ledger that never had those entries: the "
        "anchor file and the tracking store must be held by others than the database's "
        "administrators. After a forced TRUNCATE, `reserve` exits 2: the dataset's blocks are "
        "gone with the entries. Roles "
        "(scripts/postgres_roles.sql: the application role may not UPDATE, DELETE or TRUNCATE "
        "an entry, nor disable a trigger) are tested in "
        "tests/integration/ledger/test_tamper_chain.py.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
