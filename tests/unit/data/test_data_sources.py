"""Reading data per its contract: unusable input gives one line naming file, column, problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpgov.data.contract import parse_contract
from dpgov.data.sources import load_source
from dpgov.errors import UsageError


def _contract(d):
    import yaml

    return parse_contract(yaml.safe_dump(d), "c.yaml").contract


def test_missing_file_is_named(tmp_path, contract_dict) -> None:
    with pytest.raises(UsageError, match=r"data .*absent\.csv: no such file"):
        load_source(tmp_path / "absent.csv", _contract(contract_dict))


def test_zero_byte_file_is_empty(tmp_path, contract_dict) -> None:
    path = tmp_path / "d.csv"
    path.write_text("")
    with pytest.raises(UsageError, match=r"d\.csv: the file is empty"):
        load_source(path, _contract(contract_dict))


def test_header_only_table_is_empty(tmp_path, contract_dict, small_table) -> None:
    path = tmp_path / "d.csv"
    small_table.head(0).to_csv(path, index=False)
    with pytest.raises(UsageError, match=r"d\.csv: the table is empty \(no rows\)"):
        load_source(path, _contract(contract_dict))


def test_unsupported_file_type_is_named(tmp_path, contract_dict) -> None:
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(UsageError, match=r"unsupported file type '\.xlsx'"):
        load_source(path, _contract(contract_dict))


def test_unreadable_parquet_is_named(tmp_path, contract_dict) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UsageError, match=r"d\.parquet: cannot read as parquet"):
        load_source(path, _contract(contract_dict))


def test_missing_column_is_named(tmp_path, contract_dict, small_table) -> None:
    path = tmp_path / "d.csv"
    small_table.drop(columns=["x2"]).to_csv(path, index=False)
    with pytest.raises(UsageError, match=r"column 'x2' named in the contract is missing"):
        load_source(path, _contract(contract_dict))


def test_type_mismatch_names_column_value_and_line(tmp_path, contract_dict, small_table) -> None:
    table = small_table.astype({"age": object})
    table.loc[2, "age"] = "old"
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    with pytest.raises(
        UsageError,
        match=r"d\.csv: column 'age': expected float, found 'old' "
        r"\(line 4; 1 such value\)",
    ):
        load_source(path, _contract(contract_dict))


def test_fractional_integer_is_a_type_mismatch(tmp_path, contract_dict, small_table) -> None:
    table = small_table.astype({"year": float})
    table.loc[0, "year"] = 2001.5
    path = tmp_path / "d.parquet"
    table.to_parquet(path)
    with pytest.raises(
        UsageError,
        match=r"column 'year': expected integer, found 2001\.5 "
        r"\(row 1",
    ):
        load_source(path, _contract(contract_dict))


def test_nan_label_is_unusable(tmp_path, contract_dict, small_table) -> None:
    table = small_table.astype({"label": float})
    table.loc[1, "label"] = np.nan
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    with pytest.raises(
        UsageError,
        match=r"column 'label' \(label\): 1 missing value\(s\), "
        r"first at line 3; every record needs a label",
    ):
        load_source(path, _contract(contract_dict))


def test_non_binary_label_is_unusable(tmp_path, contract_dict, small_table) -> None:
    table = small_table.copy()
    table.loc[5, "label"] = 2
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    with pytest.raises(UsageError, match=r"'label' \(label\): values must be 0 or 1, found \[2\]"):
        load_source(path, _contract(contract_dict))


def test_positive_labels_map_a_text_label(tmp_path, contract_dict, small_table) -> None:
    table = small_table.copy()
    table["label"] = np.where(table["label"] == 1, "dead", "alive")
    contract_dict["columns"]["label"] = {"type": "string", "allowed": ["dead", "alive"]}
    contract_dict["positive_labels"] = ["dead"]
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    src = load_source(path, _contract(contract_dict))
    assert src.frame["label"].tolist() == small_table["label"].tolist()


def test_text_ids_keep_leading_zeros(tmp_path, contract_dict, small_table) -> None:
    table = small_table.copy()
    table["patient_id"] = [f"{i:05d}" for i in range(len(table))]
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    src = load_source(path, _contract(contract_dict))
    assert src.frame["patient_id"].iloc[3] == "00003"
    assert src.frame["patient_id"].dtype == object


def test_booleans_read_from_yes_no(tmp_path, contract_dict, small_table) -> None:
    table = small_table.copy()
    table["smoker"] = ["yes", "no"] * (len(table) // 2)
    contract_dict["columns"]["smoker"] = {"type": "boolean"}
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    src = load_source(path, _contract(contract_dict))
    assert src.frame["smoker"].dtype == bool
    assert src.frame["smoker"].iloc[:2].tolist() == [True, False]


def test_bad_boolean_is_a_type_mismatch(tmp_path, contract_dict, small_table) -> None:
    table = small_table.copy()
    table["smoker"] = ["maybe"] + ["no"] * (len(table) - 1)
    contract_dict["columns"]["smoker"] = {"type": "boolean"}
    path = tmp_path / "d.csv"
    table.to_csv(path, index=False)
    with pytest.raises(UsageError, match=r"column 'smoker': expected boolean .* found 'maybe'"):
        load_source(path, _contract(contract_dict))


def test_nullable_integer_keeps_its_missing_values(tmp_path, contract_dict, small_table) -> None:
    table = small_table.copy()
    table["visits"] = pd.array([1, None] * (len(table) // 2), dtype="Int64")
    contract_dict["columns"]["visits"] = {"type": "integer", "nullable": True}
    path = tmp_path / "d.parquet"
    table.to_parquet(path)
    src = load_source(path, _contract(contract_dict))
    assert str(src.frame["visits"].dtype) == "Int64"
    assert int(src.frame["visits"].isna().sum()) == len(table) // 2


def test_csv_and_parquet_give_the_same_frame(tmp_path, contract_dict, small_table) -> None:
    small_table.to_csv(tmp_path / "d.csv", index=False)
    small_table.to_parquet(tmp_path / "d.parquet", index=False)
    c = _contract(contract_dict)
    a = load_source(tmp_path / "d.csv", c).frame
    b = load_source(tmp_path / "d.parquet", c).frame
    pd.testing.assert_frame_equal(a, b, check_exact=False)


def test_bundled_flchain_is_the_five_year_task() -> None:
    from dpgov.data.contract import load_contract

    src = load_source(None, load_contract().contract)
    assert len(src.frame) == 7679
    assert round(float(src.frame["death_5y"].mean()), 2) == 0.12
    assert int(src.frame["creatinine"].isna().sum()) > 1000
    assert "chapter" not in src.frame.columns  # cause of death would leak the label


def test_image_npz_without_required_array_is_named(tmp_path) -> None:
    from dpgov.testing.sources import image_contract

    path = tmp_path / "x.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(UsageError, match=r"x\.npz: array 'test_images' is missing"):
        load_source(path, _contract(image_contract(metadata=False)))


def test_image_metadata_naming_an_absent_image_is_named(tmp_path) -> None:
    from dpgov.testing.sources import image_contract, make_images

    npz, meta = make_images(tmp_path / "x.npz", n_train=4, n_val=2, n_test=2)
    table = pd.read_csv(meta)
    table.loc[0, "index"] = 99
    table.to_csv(meta, index=False)
    with pytest.raises(
        UsageError,
        match=r"row 1 names image \(train, 99\), which x\.npz does "
        r"not hold",
    ):
        load_source(npz, _contract(image_contract()), metadata=meta)


def test_color_images_become_nchw(tmp_path) -> None:
    from dpgov.testing.sources import image_contract, make_images

    npz, _ = make_images(
        tmp_path / "x.npz", n_train=4, n_val=2, n_test=3, channels=3, metadata=False
    )
    src = load_source(npz, _contract(image_contract(metadata=False)))
    assert src.images is not None
    assert src.images["train"].shape == (4, 3, 28, 28)
    assert src.frame["split"].tolist().count("test") == 3
