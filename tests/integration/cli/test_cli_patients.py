"""Answers for people (issue 15) through the command line: `dpgov ledger patient`, `dpgov
budget --patients`, attach-members, erase-patient, and a changed pseudonym key refused."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dpgov.identity import os_user
from dpgov.ledger import Ledger
from dpgov.testing.sources import write_tabular
from tests.cli import run_dpgov
from tests.conftest import REPO

MECH = ["--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "200"]


@pytest.fixture
def cli(monkeypatch, capsys, home):
    monkeypatch.delenv("DPGOV_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("DPGOV_ACTOR", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args)

    return run


def _policy(tmp_path: Path, **governance: object) -> Path:
    spec = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    spec["governance"] = {**(spec.get("governance") or {}), **governance}
    path = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*')))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def prepared(cli, tmp_path):
    """A cohort prepared (and registered) under dataset `coh`, one block charged."""
    data, contract = write_tabular(tmp_path / "raw", 300, dataset="coh")
    out = tmp_path / "prep"
    rc, _, err = cli(
        "data", "prepare", "--data", str(data), "--contract", str(contract), "--out", str(out)
    )
    assert rc == 0, err
    rc, text, err = cli("ledger", "reserve", "--dataset", "coh", "--block", "2001", *MECH, "--json")
    assert rc == 0, err
    train = pd.read_parquet(out / "train.parquet")
    return out, train, json.loads(text)["reservation"], data, contract


def _lookups(kind: str = "patient_lookup") -> list:
    return Ledger.open().entries(kind)


def test_a_patient_is_found_with_the_agreed_json(cli, prepared, tmp_path) -> None:
    _, train, rid, _, _ = prepared
    assert (
        cli("policy", "set", str(_policy(tmp_path, patient_lookup=[os_user()])), "--reason", "dpo")[
            0
        ]
        == 0
    )
    pseudo = train[train["block"] == "2001"]["patient_id"].iloc[0]
    rc, text, err = cli("ledger", "patient", pseudo, "--json")
    assert rc == 0, err
    data = json.loads(text)
    assert list(data) == [
        "pseudonym", "domain", "epsilon", "delta", "composition", "charges", "blocks"
    ]  # fmt: skip
    assert data["pseudonym"] == pseudo and data["domain"] == "coh"
    assert [c["reservation"] for c in data["charges"]] == [rid]
    assert set(data["charges"][0]) == {
        "seq", "reservation", "dataset", "block", "run_id", "mechanism", "status"
    }  # fmt: skip
    assert data["blocks"] == [
        {"dataset": "coh", "block": "2001", "data_version": data["blocks"][0]["data_version"],
         "split": "train"}
    ]  # fmt: skip
    status = Ledger.open().block_status("coh", "2001", _budget())
    assert data["epsilon"] == pytest.approx(status.epsilon_spent)
    # a patient of another block: no charge reached them
    other = train[train["block"] == "2002"]["patient_id"].iloc[0]
    rc, text, _ = cli("ledger", "patient", other, "--json")
    assert rc == 0 and json.loads(text)["epsilon"] == 0.0 and json.loads(text)["charges"] == []
    # the lookup is recorded: who, and the SHA-256 of the pseudonym, never the pseudonym
    entries = _lookups()
    assert len(entries) == 2 and entries[0].actor == os_user()
    assert pseudo not in json.dumps([e.payload for e in entries])
    # a source id, hashed with the deployment's key in the contract's domain
    from dpgov.data.pseudonym import pseudonym as keyed

    members = set(train["patient_id"])  # a source id of a training patient (the split is random)
    raw = next(f"P{i:07d}" for i in range(10_000) if keyed("coh", f"P{i:07d}") in members)
    rc, text, _ = cli("ledger", "patient", "--raw", raw, "--domain", "coh", "--json")
    assert rc == 0 and json.loads(text)["domain"] == "coh"


def test_a_patient_in_no_block_exits_2_and_is_recorded(cli, prepared, tmp_path) -> None:
    cli("policy", "set", str(_policy(tmp_path, patient_lookup=[os_user()])), "--reason", "dpo")
    rc, _, err = cli("ledger", "patient", "0123456789abcdef0123")
    assert rc == 2 and "is in no block of the ledger" in err
    assert [e.payload["found"] for e in _lookups()] == [False]
    rc, _, err = cli("ledger", "patient", "P0000000")
    assert rc == 2 and "is not a pseudonym" in err


def test_an_identity_the_policy_does_not_name_is_refused_and_recorded(
    cli, prepared, tmp_path
) -> None:
    _, train, _, _, _ = prepared
    pseudo = train["patient_id"].iloc[0]
    rc, _, err = cli("ledger", "patient", pseudo)  # the packaged policy names nobody
    assert rc == 1 and "set governance.patient_lookup" in err
    cli("policy", "set", str(_policy(tmp_path, patient_lookup=["dpo-alice"])), "--reason", "dpo")
    rc, _, err = cli("ledger", "patient", pseudo, "--json")
    assert rc == 1 and f"identity '{os_user()}'" in err and "governance.patient_lookup" in err
    refused = _lookups("patient_lookup_refused")
    assert len(refused) == 2 and not _lookups()
    assert pseudo not in json.dumps([e.payload for e in refused])
    # policy_setters stand in for a null patient_lookup
    cli("policy", "set", str(_policy(tmp_path, policy_setters=[os_user()])), "--reason", "dpo")
    assert cli("ledger", "patient", pseudo)[0] == 0


def _budget():
    from dpgov.gate.in_force import policy_in_force

    return policy_in_force(Ledger.open()).policy.budget


def test_budget_patients_matches_the_ledger(cli, prepared) -> None:
    _, train, _, _, _ = prepared
    rc, text, err = cli("budget", "--patients", "--json")
    assert rc == 0, err
    (dom,) = json.loads(text)["domains"]
    classes = Ledger.open().patient_classes(_budget())
    test = pd.read_parquet(prepared[0] / "test.parquet")  # the test blocks' patients
    patients = train["patient_id"].nunique() + test["patient_id"].nunique()
    assert dom["domain"] == "coh" and dom["patients"] == patients
    assert dom["classes"] == len(classes)
    charged = train[train["block"] == "2001"]["patient_id"].nunique()
    eps = max(c.epsilon for c in classes)
    assert dom["epsilon_max"] == pytest.approx(eps) and eps > 0
    assert dom["epsilon_min"] == 0.0
    # most patients are outside the charged block: the median patient spent nothing
    assert charged < dom["patients"] / 2 and dom["epsilon_median"] == 0.0
    assert dom["patients_over_limit"] == 0
    top = dom["history_classes"][0]
    assert top["patients"] == charged and top["epsilon"] == pytest.approx(eps)
    rc, text, _ = cli("budget", "--json")
    block = next(b for b in json.loads(text)["datasets"][0]["blocks"] if b["block"] == "2001")
    assert {
        "split",
        "composition",
        "classes",
        "epsilon_spent_fixed",
        "epsilon_spent_adaptive",
    } <= set(block)
    assert block["epsilon_spent"] == pytest.approx(eps) and block["classes"] == 1
    rc, text, _ = cli("budget", "--patients")
    assert rc == 0 and "Privacy loss per patient" in text


def test_a_changed_key_is_refused_and_nothing_registered(
    cli, prepared, tmp_path, monkeypatch
) -> None:
    _, _, _, data, contract = prepared
    head = Ledger.open().head()[0]
    monkeypatch.setenv("DPGOV_PSEUDONYM_KEY", "another key")
    rc, _, err = cli(
        "data", "prepare", "--data", str(data), "--contract", str(contract),
        "--dataset", "coh-again", "--out", str(tmp_path / "again"),
    )  # fmt: skip
    assert rc == 2 and "the pseudonym key differs from the one this ledger recorded" in err
    assert Ledger.open().head()[0] == head and not (tmp_path / "again").exists()


def test_members_are_attached_to_a_block_registered_without_them(cli, tmp_path) -> None:
    data, contract = write_tabular(tmp_path / "raw", 300, dataset="leg")
    out = tmp_path / "prep"
    rc, text, err = cli(
        "data", "prepare", "--data", str(data), "--contract", str(contract), "--out", str(out),
        "--no-register", "--json",
    )  # fmt: skip
    assert rc == 0, err
    result = json.loads(text)
    n = result["blocks"]["2001"]
    rc, _, err = cli(
        "ledger", "add-block", "--dataset", "leg", "--block", "2001", "--patients", str(n),
        "--data-version", result["data_version"],
    )  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(
        "ledger", "attach-members", "--dataset", "leg", "--block", "2009", "--data", str(out)
    )
    assert rc == 2 and "its members are not among the prepared data" in err
    rc, text, err = cli(
        "ledger",
        "attach-members",
        "--dataset",
        "leg",
        "--block",
        "2001",
        "--data",
        str(out),
        "--json",
    )
    assert rc == 0, err and json.loads(text)["members"] == n
    (status,) = [s for s in Ledger.open().budget(_budget(), dataset="leg") if s.block == "2001"]
    assert status.classes == 1


def test_erasure_removes_the_patient_and_keeps_the_charges(cli, prepared, tmp_path) -> None:
    _, train, rid, _, _ = prepared
    cli("policy", "set", str(_policy(tmp_path, patient_lookup=[os_user()])), "--reason", "dpo")
    pseudo = train[train["block"] == "2001"]["patient_id"].iloc[0]
    before = Ledger.open().block_status("coh", "2001", _budget())
    rc, text, err = cli(
        "ledger", "erase-patient", pseudo, "--domain", "coh", "--reason", "request 42", "--json"
    )
    assert rc == 0, err
    assert json.loads(text)["blocks"][0]["members"] == before.patients - 1
    assert cli("ledger", "patient", pseudo)[0] == 2  # in no block any more
    after = Ledger.open().block_status("coh", "2001", _budget())
    assert after.charges == before.charges == 1
    assert after.epsilon_spent == pytest.approx(before.epsilon_spent)
    assert Ledger.open().reservation(rid).status == "pending"
