"""Identifier heuristics: column names and values that look like direct identifiers."""

from __future__ import annotations

import pytest

from dpgov.data.identifiers import column_name_kind, normalise, value_kinds


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("patient_name", "name"),
        ("FirstName", "name"),
        ("surname", "name"),
        ("MRN", "record number"),
        ("medical_record_number", "record number"),
        ("SSN", "national id"),
        ("NHSNumber", "national id"),
        ("passport", "national id"),
        ("phone", "phone number"),
        ("mobile_no", "phone number"),
        ("E-Mail", "e-mail address"),
        ("home_address", "street address"),
        ("zip_code", "street address"),
        ("dob", "date of birth"),
        ("DateOfBirth", "date of birth"),
    ],
)
def test_identifier_column_names_are_recognised(column, kind) -> None:
    assert column_name_kind(column) == kind


@pytest.mark.parametrize(
    "column",
    [
        "age",
        "sex",
        "kappa",
        "lambda",
        "creatinine",
        "flc_grp",
        "sample_yr",
        "drug_name",
        "cell_count",
        "year",
        "patient_id",
        "label",
        "diagnosis_code",
    ],
)
def test_clinical_column_names_pass(column) -> None:
    assert column_name_kind(column) is None


def test_names_are_normalised_from_camel_case() -> None:
    assert normalise("NHSNumber") == "nhs_number"
    assert normalise("dateOfBirth") == "date_of_birth"


def test_value_kinds_name_what_matched() -> None:
    assert value_kinds(["x", "a.b@c.org"]) == ["e-mail address"]
    assert value_kinds(["F", "M", "60-69", "1998-2003", "I25.1"]) == []
