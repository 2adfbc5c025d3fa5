"""Data contracts: the schema accepts what docs/data.md describes and names every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpgov.data.contract import load_contract, parse_contract
from dpgov.errors import UsageError

REPO = Path(__file__).resolve().parents[3]


def test_bundled_contract_file_equals_the_copy_inside_the_package() -> None:
    from dpgov.data.flchain import CONTRACT_YAML

    assert (REPO / "contracts" / "flchain.yaml").read_text() == CONTRACT_YAML


def test_builtin_contract_is_used_outside_the_project(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_contract()
    assert loaded.path == "builtin:flchain"
    assert loaded.contract.dataset == "flchain"


def test_flchain_contract_features_and_roles() -> None:
    c = load_contract(REPO / "contracts" / "flchain.yaml").contract
    assert c.feature_columns() == ["age", "sex", "kappa", "lambda", "flc_grp", "creatinine", "mgus"]
    assert c.sensitive_names() == ["sex", "age_band"]
    assert "creatinine" not in c.required_columns()


def test_unknown_top_level_key_is_rejected(contract_dict, write_contract) -> None:
    contract_dict["colums"] = {}
    with pytest.raises(UsageError, match=r"contract .*contract\.yaml: colums: unknown key"):
        load_contract(write_contract(contract_dict))


def test_unknown_column_key_is_rejected(contract_dict, write_contract) -> None:
    contract_dict["columns"]["age"]["maximum"] = 3
    with pytest.raises(UsageError, match=r"columns\.age\.maximum: unknown key"):
        load_contract(write_contract(contract_dict))


def test_unknown_column_type_is_rejected(contract_dict, write_contract) -> None:
    contract_dict["columns"]["age"]["type"] = "decimal"
    with pytest.raises(UsageError, match=r"columns\.age\.type: .*'decimal'"):
        load_contract(write_contract(contract_dict))


def test_label_must_be_a_listed_column(contract_dict, write_contract) -> None:
    contract_dict["label"] = "outcome"
    with pytest.raises(UsageError, match="label column 'outcome' is not listed under columns"):
        load_contract(write_contract(contract_dict))


def test_several_records_per_patient_need_group_privacy(contract_dict, write_contract) -> None:
    contract_dict["privacy"] = {"max_records_per_patient": 3}
    with pytest.raises(UsageError, match="max_records_per_patient > 1 needs group_privacy"):
        load_contract(write_contract(contract_dict))


def test_group_privacy_with_a_bound_is_accepted(contract_dict, write_contract) -> None:
    contract_dict["privacy"] = {"max_records_per_patient": 3, "group_privacy": True}
    assert (
        load_contract(write_contract(contract_dict)).contract.privacy.max_records_per_patient == 3
    )


def test_unquoted_yes_no_in_a_string_set_is_named(contract_dict, write_contract) -> None:
    contract_dict["columns"]["smoker"] = {"type": "string", "allowed": [True, False]}
    with pytest.raises(UsageError, match="quote yes/no/true/false in YAML"):
        load_contract(write_contract(contract_dict))


def test_min_above_max_is_rejected(contract_dict, write_contract) -> None:
    contract_dict["columns"]["age"].update(min=90, max=10)
    with pytest.raises(UsageError, match="min 90 is above max 10"):
        load_contract(write_contract(contract_dict))


def test_group_adjacent_is_refused_pointing_to_fixed_edges(contract_dict, write_contract) -> None:
    contract_dict["block"] = {"column": "year", "group_adjacent": True}
    with pytest.raises(UsageError, match=r"group_adjacent is no longer supported.*block\.edges"):
        load_contract(write_contract(contract_dict))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"column": "sex", "edges": [1]}, "block.edges needs an integer block column"),
        ({"column": "year", "edges": [2003, 2002]}, "block.edges must be strictly increasing"),
        ({"column": "year", "edges": [1990]}, r"must lie above the block column's min"),
        ({"constant": "all", "edges": [3]}, "block.edges needs block.column"),
    ],
)
def test_bad_block_edges_are_one_line(contract_dict, write_contract, block, message) -> None:
    contract_dict["columns"]["year"].update(min=1990, max=2010)
    contract_dict["block"] = block
    with pytest.raises(UsageError, match=message) as err:
        load_contract(write_contract(contract_dict))
    assert "\n" not in str(err.value)


def test_one_record_per_patient_is_only_for_images_without_ids(
    contract_dict, write_contract
) -> None:
    contract_dict["privacy"] = {"one_record_per_patient": True}
    with pytest.raises(UsageError, match="one_record_per_patient is for image data without"):
        load_contract(write_contract(contract_dict))


def test_string_label_needs_positive_labels(contract_dict, write_contract) -> None:
    contract_dict["columns"]["label"] = {"type": "string", "allowed": ["dead", "alive"]}
    with pytest.raises(UsageError, match="declare positive_labels"):
        load_contract(write_contract(contract_dict))


def test_block_needs_exactly_one_source(contract_dict, write_contract) -> None:
    contract_dict["block"] = {"column": "year", "constant": "all"}
    with pytest.raises(UsageError, match=r"exactly one of block\.column or block\.constant"):
        load_contract(write_contract(contract_dict))


def test_missing_contract_file_is_named(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"contract .*nope\.yaml: cannot read"):
        load_contract(tmp_path / "nope.yaml")


def test_invalid_yaml_is_named() -> None:
    with pytest.raises(UsageError, match=r"contract x\.yaml: not valid YAML"):
        parse_contract("version: [1", "x.yaml")


def test_non_mapping_is_named() -> None:
    with pytest.raises(UsageError, match="expected a mapping at top level, found list"):
        parse_contract("- 1\n- 2\n", "x.yaml")
