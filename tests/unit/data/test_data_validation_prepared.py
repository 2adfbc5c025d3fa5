"""Checks on prepared output (pandas-computed, recorded as such) and the validate() run."""

from __future__ import annotations

import json

import pytest

from dpgov.data import DataParams, load_prepared, prepare, validate
from dpgov.data.contract import load_contract
from dpgov.data.validation import prepared_checks
from dpgov.errors import UsageError
from dpgov.testing.sources import write_images, write_tabular


@pytest.fixture
def made(tmp_path):
    data, contract = write_tabular(
        tmp_path / "raw", 300, dataset="small", min_block=20, min_subgroup=5
    )
    result = prepare(data, contract, out=tmp_path / "prep", params=DataParams(), register=False)
    return data, contract, result


def rule(checks, name):
    return [c for c in checks if c.rule == name]


def checks_for(made, delta=1e-5, **minimum):
    _, contract, result = made
    c = load_contract(contract).contract
    if minimum:
        c = c.model_copy(update={"minimum": c.minimum.model_copy(update=minimum)})
    return prepared_checks(load_prepared(result.path), c, delta=delta)


def test_prepared_checks_pass_on_clean_data(made) -> None:
    checks = checks_for(made)
    assert [c.name for c in checks if not c.success] == []
    assert {c.engine for c in checks} == {"pandas"}
    assert all("Great Expectations has no expectation" in c.expectation for c in checks)


def test_patients_per_block_fails_below_the_minimum(made) -> None:
    failing = [
        c
        for c in rule(checks_for(made, patients_per_block=1000), "patients_per_block")
        if not c.success
    ]
    assert len(failing) == 4  # four years, each short
    assert "short" in failing[0].detail


def test_patients_per_subgroup_fails_below_the_minimum(made) -> None:
    checks = rule(checks_for(made, patients_per_subgroup=40), "patients_per_subgroup")
    failing = {(c.table, c.column) for c in checks if not c.success}
    assert ("test", "sex") in failing and ("test", "age_band") in failing
    assert any(c.success for c in checks)  # the big training groups still pass


def test_delta_must_be_below_one_over_the_patients(made) -> None:
    (ok,) = rule(checks_for(made, delta=1e-5), "delta")
    (bad,) = rule(checks_for(made, delta=0.01), "delta")
    assert ok.success and not bad.success
    assert bad.observed["patients"] == 300
    assert "not below 1/300" in bad.detail


def test_shared_patients_between_splits_fail(made) -> None:
    _, contract, result = made
    p = load_prepared(result.path)
    p.test.loc[0, "patient_id"] = p.train.loc[0, "patient_id"]
    checks = prepared_checks(p, load_contract(contract).contract, delta=1e-5)
    (split,) = rule(checks, "disjoint_split")
    assert not split.success and split.observed == {"shared_patients": 1}


def test_a_patient_in_two_blocks_fails(made) -> None:
    _, contract, result = made
    p = load_prepared(result.path)
    other = p.train[p.train["block"] != p.train.loc[0, "block"]].index[0]
    p.train.loc[other, "patient_id"] = p.train.loc[0, "patient_id"]
    (blocks,) = rule(
        prepared_checks(p, load_contract(contract).contract, delta=1e-5), "disjoint_blocks"
    )
    assert not blocks.success


def test_plain_ids_fail_the_pseudonym_check(made) -> None:
    _, contract, result = made
    p = load_prepared(result.path)
    p.train.loc[0, "patient_id"] = "P0000001"
    (ids,) = rule(
        prepared_checks(p, load_contract(contract).contract, delta=1e-5), "pseudonymous_ids"
    )
    assert not ids.success and ids.observed == {"not_pseudonyms": 1}


def test_non_finite_features_fail(made) -> None:
    _, contract, result = made
    p = load_prepared(result.path)
    p.train.loc[0, p.meta["features"][0]] = float("nan")
    (finite,) = rule(
        prepared_checks(p, load_contract(contract).contract, delta=1e-5), "finite_features"
    )
    assert not finite.success and finite.observed["non_finite"]["train"] == 1


def test_a_missing_label_class_fails(made) -> None:
    _, contract, result = made
    p = load_prepared(result.path)
    p.test["label"] = 0
    (classes,) = rule(
        prepared_checks(p, load_contract(contract).contract, delta=1e-5), "label_classes"
    )
    assert not classes.success


def test_validate_writes_json_and_summary(made, tmp_path) -> None:
    data, contract, result = made
    v = validate(data, contract, prepared=result.path, out=tmp_path / "val")
    assert v.ok
    saved = json.loads((tmp_path / "val" / "result.json").read_text())
    assert saved["ok"] is True and saved["data_version"] == result.data_version
    assert saved["checks_by_engine"]["great_expectations"] > 10
    assert "PASSED" in (tmp_path / "val" / "summary.md").read_text()


def test_validate_records_a_failure(made, tmp_path, write_policy) -> None:
    data, contract, result = made
    v = validate(
        data, contract, prepared=result.path, out=tmp_path / "val", policy=write_policy(delta=0.01)
    )
    assert not v.ok and [c.rule for c in v.failed] == ["delta"]
    summary = (tmp_path / "val" / "summary.md").read_text()
    assert "FAILED" in summary and "1/(number of patients)" in summary
    assert json.loads((tmp_path / "val" / "result.json").read_text())["checks_failed"] == 1


def test_validate_refuses_prepared_data_of_another_source(made, tmp_path) -> None:
    _, contract, result = made
    other, _ = write_tabular(tmp_path / "other", 300, dataset="small", seed=9)
    with pytest.raises(UsageError, match="was made from other data than"):
        validate(other, contract, prepared=result.path, out=tmp_path / "val")
    assert not (tmp_path / "val").exists()


def test_validate_images_checks_pixels(tmp_path) -> None:
    npz, contract, meta = write_images(tmp_path / "raw", n_train=60, n_val=10, n_test=50)
    result = prepare(npz, contract, metadata=meta, out=tmp_path / "img", register=False)
    v = validate(npz, contract, metadata=meta, prepared=result.path, out=tmp_path / "val")
    (images,) = [c for c in v.checks if c.rule == "images"]
    assert images.success
    assert v.ok, [c.name for c in v.failed]
