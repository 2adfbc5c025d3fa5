"""Every contract rule, failing and passing, on small tables made here, with real Great
Expectations runs (the GX-backed rules) and the pandas-computed rules beside them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from dpgov.data.contract import parse_contract
from dpgov.data.sources import coerce_table
from dpgov.data.validation import contract_checks


def run(frame: pd.DataFrame, contract: dict, coerce: bool = True):
    c = parse_contract(yaml.safe_dump(contract), "c.yaml").contract
    if coerce:
        frame = coerce_table(frame, c, "t")
    return contract_checks(frame, c, dataset="t")


def only(checks, rule: str, column: str | None = None, engine: str | None = None):
    found = [
        ch
        for ch in checks
        if ch.rule == rule
        and (column is None or ch.column == column)
        and (engine is None or ch.engine == engine)
    ]
    assert len(found) == 1, [(c.rule, c.column, c.name) for c in found]
    return found[0]


def test_clean_table_passes_every_rule(small_table, contract_dict) -> None:
    checks = run(small_table, contract_dict)
    assert [c.name for c in checks if not c.success] == []
    engines = {c.engine for c in checks}
    assert engines == {"great_expectations", "pandas"}


def test_columns_rule_fails_on_a_column_the_contract_does_not_name(
    small_table, contract_dict
) -> None:
    check = only(run(small_table.assign(extra=1.0), contract_dict), "columns")
    assert not check.success
    assert check.expectation == "expect_table_columns_to_match_set"
    assert check.detail == "not in the contract: extra"


def test_columns_rule_allows_extra_columns_when_the_contract_does(
    small_table, contract_dict
) -> None:
    contract_dict["allow_extra_columns"] = True
    assert only(run(small_table.assign(extra=1.0), contract_dict), "columns").success


def test_type_rule_fails_on_a_column_of_another_type(small_table, contract_dict) -> None:
    frame = small_table.assign(age=small_table["age"].astype(str).astype(object))
    check = only(run(frame, contract_dict, coerce=False), "type", "age")
    assert not check.success and check.engine == "great_expectations"
    assert only(run(small_table, contract_dict), "type", "age").success


def test_not_null_rule_fails_on_a_missing_sensitive_value(small_table, contract_dict) -> None:
    frame = small_table.astype({"sex": object})
    frame.loc[3, "sex"] = None
    check = only(run(frame, contract_dict), "not_null", "sex")
    assert not check.success
    assert check.observed["unexpected"] == 1 and check.observed["example_rows"] == [4]
    assert "sensitive" in check.name


def test_not_null_rule_passes_a_nullable_column_with_gaps(small_table, contract_dict) -> None:
    assert small_table["lab"].isna().any()
    checks = run(small_table, contract_dict)
    assert not [c for c in checks if c.rule == "not_null" and c.column == "lab"]
    assert only(checks, "range", "lab").success


def test_range_rule_fails_out_of_bounds(small_table, contract_dict) -> None:
    frame = small_table.copy()
    frame.loc[0, "age"] = 150.0
    check = only(run(frame, contract_dict), "range", "age")
    assert not check.success
    assert check.observed["examples"] == [150.0]
    assert check.detail.startswith("1 of 40 values")


def test_range_is_paired_with_not_null(small_table, contract_dict) -> None:
    frame = small_table.copy()
    frame.loc[0, "age"] = np.nan
    checks = run(frame, contract_dict)
    assert only(checks, "range", "age").success  # GX range skips missing values...
    assert not only(checks, "not_null", "age").success  # ...so not-null catches them


def test_allowed_rule_fails_on_a_value_outside_the_set(small_table, contract_dict) -> None:
    frame = small_table.astype({"sex": object})
    frame.loc[1, "sex"] = "X"
    check = only(run(frame, contract_dict), "allowed", "sex")
    assert not check.success and check.observed["examples"] == ["X"]


def test_one_record_per_patient_fails_on_a_duplicate(small_table, contract_dict) -> None:
    frame = pd.concat([small_table, small_table.head(1)], ignore_index=True)
    check = only(run(frame, contract_dict), "records_per_patient")
    assert not check.success and check.engine == "great_expectations"
    assert "examples" not in check.observed  # ids are not copied into results


def test_a_declared_bound_under_group_privacy_allows_repeats(small_table, contract_dict) -> None:
    contract_dict["privacy"] = {"max_records_per_patient": 2, "group_privacy": True}
    frame = pd.concat([small_table, small_table.head(5)], ignore_index=True)
    check = only(run(frame, contract_dict), "records_per_patient")
    assert check.success and check.engine == "pandas"
    assert "Great Expectations has no expectation" in check.expectation


def test_a_declared_bound_fails_when_exceeded(small_table, contract_dict) -> None:
    contract_dict["privacy"] = {"max_records_per_patient": 2, "group_privacy": True}
    frame = pd.concat([small_table] + [small_table.head(1)] * 2, ignore_index=True)
    check = only(run(frame, contract_dict), "records_per_patient")
    assert not check.success and check.observed == {"max_records": 3, "patients_over": 1}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("jane.roe@example.org", "e-mail address"),
        ("078-05-1120", "national id"),
        ("+44 20 7946 0958", "phone number"),
        ("MRN 00123456", "record number"),
        ("221 Baker Street", "street address"),
        ("1961-07-04", "exact date"),
        ("Roe, Jane", "name"),
    ],
)
def test_identifier_values_fail_without_being_stored(
    small_table, contract_dict, value, kind
) -> None:
    contract_dict["columns"]["note"] = {"type": "string", "nullable": True}
    frame = small_table.assign(note=["fine"] * 39 + [value])
    check = only(run(frame, contract_dict), "identifiers", "note")
    assert not check.success and check.engine == "great_expectations"
    assert kind in check.observed["kinds"]
    assert value not in json.dumps(check.observed)


def test_identifier_values_pass_on_clinical_codes(small_table, contract_dict) -> None:
    contract_dict["columns"]["note"] = {"type": "string"}
    frame = small_table.assign(note=["I25.1", "C34", "60-69", "stage II"] * 10)
    assert only(run(frame, contract_dict), "identifiers", "note").success


def test_identifier_column_names_fail(small_table, contract_dict) -> None:
    contract_dict["columns"]["Phone"] = {"type": "string"}
    frame = small_table.assign(Phone="x")
    check = next(c for c in run(frame, contract_dict) if c.name.startswith("no column name"))
    assert not check.success
    assert check.observed["flagged"] == [{"column": "Phone", "looks_like": "phone number"}]


def test_date_columns_fail(small_table, contract_dict) -> None:
    contract_dict["allow_extra_columns"] = True
    frame = small_table.assign(born=pd.Timestamp("1960-01-01"))
    check = next(c for c in run(frame, contract_dict) if c.name.startswith("no exact-date"))
    assert not check.success and check.observed["flagged"] == ["born"]


def test_record_number_like_integers_fail(contract_dict) -> None:
    from dpgov.testing.sources import make_tabular

    table = make_tabular(120, n_blocks=2)
    contract_dict["columns"]["ref"] = {"type": "integer"}
    frame = table.assign(ref=np.arange(100000, 100120))
    check = next(c for c in run(frame, contract_dict) if c.name.startswith("no integer column"))
    assert not check.success and check.observed["flagged"] == ["ref"]
    ok = next(
        c
        for c in run(table.assign(ref=np.arange(120) % 7), contract_dict)
        if c.name.startswith("no integer column")
    )
    assert ok.success


def test_examples_of_bad_values_never_copy_an_identifier(small_table, contract_dict) -> None:
    frame = small_table.astype({"sex": object})
    frame.loc[1, "sex"] = "jane.roe@example.org"
    check = only(run(frame, contract_dict), "allowed", "sex")
    assert not check.success
    assert check.observed["examples"] == ["<redacted: looks like e-mail address>"]
