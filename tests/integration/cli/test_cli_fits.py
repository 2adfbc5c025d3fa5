"""Output that fits (issue 22, item 4) through the command line: every table reads at 80
columns (the width of piped output) with dataset, block and ε figures never cut; `ledger show`
prints one line of summary per entry; the short reservation ids it prints are accepted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dpgov.cli._output import eps_down, eps_up
from dpgov.identity import os_user
from dpgov.testing.sources import write_tabular
from tests.cli import run_dpgov
from tests.conftest import REPO

DATASET = "chest_xray_site_cohort"  # a long name, as real ones are
MECH = ["--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "200"]


@pytest.fixture
def cli(monkeypatch, capsys, home):
    monkeypatch.delenv("DPGOV_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("DPGOV_ACTOR", raising=False)
    monkeypatch.setenv("COLUMNS", "80")

    def run(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args)

    return run


@pytest.fixture
def charged(cli, tmp_path):
    """A cohort prepared and registered (with members), two blocks charged in one reservation,
    a policy set that lets the acting user look patients up."""
    data, contract = write_tabular(tmp_path / "raw", 300, dataset=DATASET)
    out = tmp_path / "prep"
    rc, _, err = cli(
        "data", "prepare", "--data", str(data), "--contract", str(contract), "--out", str(out)
    )
    assert rc == 0, err
    rc, text, err = cli(
        "ledger", "reserve", "--dataset", DATASET, "--block", "2001", "--block", "2002", *MECH,
        "--json",
    )  # fmt: skip
    assert rc == 0, err
    spec = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    spec["governance"] = {**(spec.get("governance") or {}), "patient_lookup": [os_user()]}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(spec))
    reason = "the data protection officer may look patients up, agreed at the kickoff meeting"
    assert cli("policy", "set", str(policy), "--reason", reason)[0] == 0
    return pd.read_parquet(out / "train.parquet"), json.loads(text)["reservation"]


def fits(text: str) -> list[str]:
    """The output's lines, each checked to fit 80 columns and to cut nothing."""
    lines = text.splitlines()
    assert lines, "no output"
    for line in lines:
        assert len(line.rstrip()) <= 80, line
        assert "…" not in line, line
    return lines


def row(lines: list[str], *cells: str) -> str:
    """The one line holding every cell, whole (cells are separated by spaces)."""
    hits = [ln for ln in lines if all(f" {c} " in f" {ln} " for c in cells)]
    assert len(hits) == 1, (cells, lines)
    return hits[0]


def test_budget_fits_80_columns_with_every_figure_whole(cli, charged) -> None:
    rc, text, err = cli("budget", "--json")
    assert rc == 0, err
    (ds,) = json.loads(text)["datasets"]
    rc, text, err = cli("budget")
    assert rc == 0, err
    lines = fits(text)
    assert any(f"dataset {DATASET}" in ln for ln in lines)
    for b in ds["blocks"]:
        row(
            lines,
            b["block"],
            eps_up(b["epsilon_spent"]),
            eps_up(b["epsilon_spent_fixed"]),
            eps_down(b["remaining"]),
        )
    assert "left: remaining" in text  # the short headers are explained


def test_budget_patients_fits_80_columns(cli, charged) -> None:
    rc, text, err = cli("budget", "--patients", "--json")  # the old spelling, hidden
    assert rc == 0, err
    (dom,) = json.loads(text)["domains"]
    rc, text, err = cli("budget", "--per-patient")
    assert rc == 0, err
    lines = fits(text)
    row(lines, DATASET, str(dom["patients"]), eps_up(dom["epsilon_max"]))
    shown: dict[tuple[str, ...], int] = {}  # classes alike in every figure share a line shape
    for c in dom["history_classes"]:
        cells = (DATASET, str(c["patients"]), str(c["charges"]), eps_up(c["epsilon"]))
        shown[cells] = shown.get(cells, 0) + 1
    below = lines[next(i for i, ln in enumerate(lines) if ln.startswith("History classes")) :]
    for cells, count in shown.items():
        hits = [ln for ln in below if all(f" {x} " in f" {ln} " for x in cells)]
        assert len(hits) == count, (cells, lines)


def test_ledger_show_is_one_summary_line_per_entry(cli, charged) -> None:
    _, rid = charged
    rc, text, err = cli("ledger", "show", "--json")
    assert rc == 0, err
    entries = json.loads(text)["entries"]
    rc, text, err = cli("ledger", "show")
    assert rc == 0, err
    lines = fits(text)
    assert "{" not in text  # summaries, not raw JSON
    body = [ln for ln in lines if re.match(r"\s*\d+ \d{4}-\d\d-\d\d ", ln)]
    assert [int(ln.split()[0]) for ln in body] == [e["seq"] for e in entries]
    reservation = row(lines, "reservation", rid[:8])
    assert DATASET in reservation  # the summary starts with what a reader needs
    assert len(text.splitlines()) <= 3 * len(entries) + 4  # wrapped at most once or twice


def test_short_reservation_ids_are_accepted_by_commit_release_and_abort(cli, charged) -> None:
    _, rid = charged
    rc, text, err = cli("ledger", "commit", rid[:8], "--json")
    assert rc == 0, err
    assert json.loads(text)["reservation"] == rid  # resolved to the full id
    for command in ("release", "abort"):
        rc, text, err = cli(
            "ledger", "reserve", "--dataset", DATASET, "--block", "2001", *MECH, "--json"
        )
        assert rc == 0, err
        other = json.loads(text)["reservation"]
        rc, text, err = cli("ledger", command, other[:6], "--reason", "test", "--json")
        assert rc == 0, err
        assert json.loads(text)["reservation"] == other
    rc, _, err = cli("ledger", "commit", "zz-not-an-id")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "unknown reservation 'zz-not-an-id'" in err


def test_ledger_patient_fits_80_columns(cli, charged) -> None:
    train, rid = charged
    pseudo = train[train["block"] == "2001"]["patient_id"].iloc[0]
    rc, text, err = cli("ledger", "patient", pseudo)
    assert rc == 0, err
    lines = fits(text)
    row(lines, rid[:8], f"{DATASET}/2001", "200")


def test_policy_history_and_show_fit_80_columns(cli, charged) -> None:
    rc, text, err = cli("policy", "history", "--json")
    assert rc == 0, err
    (change,) = json.loads(text)["changes"]
    rc, text, err = cli("policy", "history")
    assert rc == 0, err
    lines = fits(text)
    row(lines, str(change["seq"]), "ledger", change["sha256"][:12])
    assert set(change["reason"].split()) <= set(text.split())  # the reason wraps, whole
    rc, text, err = cli("policy", "show")
    assert rc == 0, err
    head = text.split("\n\n")[0]  # the policy's own YAML follows as written
    fits(head)
    assert change["sha256"] in head


def test_audit_fits_80_columns(cli, charged) -> None:
    _, text, _ = cli("audit", "--json")  # findings (no data versions in DVC here): exit 1
    blocks = json.loads(text)["blocks"]
    _, text, _ = cli("audit")
    lines = fits(text)
    for b in blocks:
        row(lines, b["dataset"], b["block"], eps_up(b["epsilon"]))


def test_ids_printed_are_accepted_not_json(cli, charged, tmp_path: Path) -> None:
    """A prefix that is no reservation is refused before anything is written."""
    from dpgov.ledger import Ledger

    before = len(Ledger.open().entries())
    rc, _, err = cli("ledger", "abort", "0000000000", "--reason", "x")
    assert rc == 2 and "no reservation id is or starts with it" in err
    assert len(Ledger.open().entries()) == before


def test_renamed_options_keep_their_old_spelling(cli, charged) -> None:
    """`ledger patient --source-id` (was --raw, which `flows ingest` uses for a folder) and
    `ledger attach-members --prepared` (was --data, which `data prepare` uses for raw data)."""
    train, _ = charged
    from dpgov.data.pseudonym import pseudonym as keyed

    members = set(train["patient_id"])
    raw = next(f"P{i:07d}" for i in range(10_000) if keyed(DATASET, f"P{i:07d}") in members)
    for option in ("--source-id", "--raw"):
        rc, text, err = cli("ledger", "patient", option, raw, "--domain", DATASET, "--json")
        assert rc == 0, err
        assert json.loads(text)["pseudonym"] in members
    rc, _, err = cli("ledger", "patient", "--source-id", raw, "--raw", "P1", "--domain", DATASET)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "old spelling" in err
    rc, _, err = cli("ledger", "patient", "--source-id", raw)
    assert rc == 2 and "--source-id needs --domain" in err
    for option in ("--prepared", "--data"):
        rc, _, err = cli(
            "ledger", "attach-members", "--dataset", DATASET, "--block", "2001", option,
            "/nonexistent/prepared",
        )  # fmt: skip
        assert rc == 2 and "/nonexistent/prepared" in err and len(err.strip().splitlines()) == 1


def test_policy_approve_takes_the_start_of_the_proposed_policys_hash(
    cli, charged, tmp_path, monkeypatch
) -> None:
    from dpgov.testing.policies import write_policy

    more = write_policy(
        tmp_path / "more.yaml",
        budget={"epsilon_per_block": 50.0},
        governance={"patient_lookup": [os_user()]},
    )
    rc, text, err = cli("policy", "set", str(more), "--reason", "more", "--json")
    assert rc == 0, err
    proposal = json.loads(text)
    assert proposal["action"] == "propose"
    rc, text, err = cli("policy", "history")
    assert rc == 0, err
    fits(text)
    short = proposal["sha256"][:12]
    assert f"proposal {proposal['seq']} (ledger, policy {short})" in text  # as printed
    rc, _, err = cli("policy", "approve", "ffffffffffff")
    assert rc == 2 and "unknown open proposal 'ffffffffffff'" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr("dpgov.identity.os_user", lambda: "bob")  # not the proposer
    rc, text, err = cli("policy", "approve", short, "--json")
    assert rc == 0, err
    assert json.loads(text)["proposal"] == proposal["seq"]
    assert json.loads(text)["status"] == "in force"
