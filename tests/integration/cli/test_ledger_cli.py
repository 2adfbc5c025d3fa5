"""The command line as users run it: exit codes, one-line errors, JSON, nothing written on
bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def dpgov(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DPGOV_HOME": str(home), **(env or {})}
    full_env.pop("DPGOV_LEDGER_URL", None) if "DPGOV_LEDGER_URL" not in (env or {}) else None
    return subprocess.run(
        [sys.executable, "-m", "dpgov", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=120,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_cost_json_matches_the_agreed_shape(dpgov_home):
    proc = dpgov(
        "cost",
        "--noise-multiplier",
        "1.1",
        "--sample-rate",
        "0.01",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--json",
        home=dpgov_home,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["accountant"] == "pld" and data["delta"] == 1e-5
    assert data["epsilon"] == pytest.approx(1.517, abs=0.01)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--noise-multiplier", "0"], "noise_multiplier must be > 0"),
        (["--sample-rate", "1.5"], r"sample_rate must be in (0, 1]"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--delta", "1"], "delta must be in (0, 1)"),
        (["--accountant", "gdp"], "unknown accountant 'gdp'"),
    ],
)
def test_cost_bad_input_is_one_line_and_exit_2(dpgov_home, args, message):
    base = {"--noise-multiplier": "1", "--sample-rate": "0.01", "--steps": "10"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    proc = dpgov("cost", *flat, home=dpgov_home)
    assert proc.returncode == 2
    assert message in one_line_error(proc)


def test_reserve_commit_budget_and_verify_round_trip(dpgov_home):
    assert (
        dpgov(
            "ledger",
            "add-block",
            "--dataset",
            "d",
            "--block",
            "b1",
            "--patients",
            "300",
            home=dpgov_home,
        ).returncode
        == 0
    )
    proc = dpgov(
        "ledger",
        "reserve",
        "--dataset",
        "d",
        "--block",
        "b1",
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        "0.01",
        "--steps",
        "200",
        "--json",
        home=dpgov_home,
    )
    assert proc.returncode == 0, proc.stderr
    rid = json.loads(proc.stdout)["reservation"]
    assert dpgov("ledger", "commit", rid, "--steps", "150", home=dpgov_home).returncode == 0
    budget = json.loads(dpgov("budget", "--json", home=dpgov_home).stdout)
    block = budget["datasets"][0]["blocks"][0]
    assert block["block"] == "b1" and block["charges"] == 1 and block["epsilon_limit"] == 8.0
    from dpgov.accounting import DpSgdMechanism, epsilon

    expected = epsilon(
        [DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=150)], delta=1e-5
    )
    assert block["epsilon_spent_fixed"] == pytest.approx(expected, rel=1e-6)
    from tests.filter_reference import filter_eps

    ran = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=150)
    assert block["composition"] == "adaptive"  # the default rule: the RDP filter's figure
    assert block["epsilon_spent"] == pytest.approx(filter_eps([ran], 1e-5), rel=1e-9)
    verify = dpgov("ledger", "verify", "--json", home=dpgov_home)
    assert verify.returncode == 0 and json.loads(verify.stdout)["entries"] == 3
    shown = json.loads(dpgov("ledger", "show", "--json", home=dpgov_home).stdout)
    assert [e["kind"] for e in shown["entries"]] == ["block_added", "reservation", "commit"]


def test_refused_reservation_exits_1_naming_block_request_and_remainder(dpgov_home):
    dpgov(
        "ledger",
        "add-block",
        "--dataset",
        "d",
        "--block",
        "b1",
        "--patients",
        "300",
        home=dpgov_home,
    )
    proc = dpgov(
        "ledger",
        "reserve",
        "--dataset",
        "d",
        "--block",
        "b1",
        "--noise-multiplier",
        "0.5",
        "--sample-rate",
        "0.1",
        "--steps",
        "5000",
        home=dpgov_home,
    )
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "block 'b1'" in line and "costs ε=" in line and "remaining 8.0000" in line
    assert (
        len(json.loads(dpgov("ledger", "show", "--json", home=dpgov_home).stdout)["entries"]) == 1
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--block", "nope"], "unknown block 'nope' in dataset 'd'"),
        (["--sample-rate", "0"], "sample_rate must be in (0, 1]"),
        (
            ["--policy", "lax.yaml"],
            "takes no policy file; change the policy with `dpgov policy set",
        ),
    ],
)
def test_bad_reservations_exit_2_and_write_nothing(dpgov_home, args, message):
    dpgov(
        "ledger",
        "add-block",
        "--dataset",
        "d",
        "--block",
        "b1",
        "--patients",
        "300",
        home=dpgov_home,
    )
    base = {
        "--dataset": "d",
        "--block": "b1",
        "--noise-multiplier": "1",
        "--sample-rate": "0.01",
        "--steps": "10",
    }
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    proc = dpgov("ledger", "reserve", *[x for kv in base.items() for x in kv], home=dpgov_home)
    assert proc.returncode == 2
    assert message in one_line_error(proc)
    assert (
        len(json.loads(dpgov("ledger", "show", "--json", home=dpgov_home).stdout)["entries"]) == 1
    )


def test_malformed_ledger_url_is_one_line_exit_2(dpgov_home):
    proc = dpgov("budget", home=dpgov_home, env={"DPGOV_LEDGER_URL": "not a url::"})
    assert proc.returncode == 2
    assert "ledger URL 'not a url::' is malformed" in one_line_error(proc)


def test_unreachable_ledger_database_is_one_line_exit_2(dpgov_home):
    proc = dpgov(
        "budget", home=dpgov_home, env={"DPGOV_LEDGER_URL": "postgresql://nobody@127.0.0.1:1/none"}
    )
    assert proc.returncode == 2
    assert "does not answer" in one_line_error(proc)


def test_verify_exits_1_naming_the_first_bad_entry(dpgov_home):
    import sqlite3

    dpgov(
        "ledger",
        "add-block",
        "--dataset",
        "d",
        "--block",
        "b1",
        "--patients",
        "300",
        home=dpgov_home,
    )
    dpgov(
        "ledger",
        "add-block",
        "--dataset",
        "d",
        "--block",
        "b2",
        "--patients",
        "300",
        home=dpgov_home,
    )
    db = sqlite3.connect(dpgov_home / "ledger.db")
    db.execute("DROP TRIGGER dpgov_entries_no_update")
    db.execute("UPDATE dpgov_entries SET actor = 'mallory' WHERE seq = 2")
    db.commit()
    db.close()
    proc = dpgov("ledger", "verify", home=dpgov_home)
    assert proc.returncode == 1
    assert "FAILED at entry 2" in proc.stderr
