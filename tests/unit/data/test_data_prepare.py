"""Prepare: split by patient, blocks, encoding from training statistics, atomic output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dpgov.data import DataParams, data_version, load_prepared, prepare
from dpgov.errors import UsageError
from dpgov.testing.sources import write_images, write_tabular


@pytest.fixture
def prepared(tmp_path):
    data, contract = write_tabular(tmp_path / "raw", 400, dataset="small")
    result = prepare(
        data, contract, out=tmp_path / "out", params=DataParams(seed=3), register=False
    )
    return result, load_prepared(result.path), data, contract


def test_train_and_test_hold_disjoint_patients(prepared) -> None:
    _, p, _, _ = prepared
    assert not set(p.train["patient_id"]) & set(p.test["patient_id"])
    assert len(p.train) + len(p.test) == 400


def test_test_share_is_stratified_by_block_and_label(prepared) -> None:
    _, p, _, _ = prepared
    both = pd.concat([p.train.assign(t=0), p.test.assign(t=1)])
    share = both.groupby(["block", "label"])["t"].mean()
    assert ((share - 0.2).abs() < 0.06).all()


def test_source_ids_never_reach_prepared_data(prepared) -> None:
    _, p, data, _ = prepared
    raw = set(pd.read_csv(data)["patient_id"])
    assert not raw & set(p.train["patient_id"]) and not raw & set(p.test["patient_id"])
    assert p.train["patient_id"].str.fullmatch(r"[0-9a-f]{20}").all()


def test_features_are_float32_and_standardised_on_train(prepared) -> None:
    _, p, _, _ = prepared
    x = p.features("train")
    assert x.dtype == np.float32 and x.shape == (len(p.train), len(p.meta["features"]))
    col = p.meta["features"].index("x1")
    assert abs(float(x[:, col].mean())) < 1e-5
    assert abs(float(x[:, col].std()) - 1) < 1e-3
    assert abs(float(p.features("test")[:, col].mean())) > 1e-6  # test did not set the scale


def test_missing_values_are_imputed_and_indicated(prepared) -> None:
    _, p, data, _ = prepared
    step = next(e for e in p.meta["encoding"] if e["column"] == "lab")
    assert step["missing_indicator"] == "lab_missing"
    assert step["impute"]["statistic"] == "training median"
    raw = pd.read_csv(data)
    assert step["impute"]["missing_train"] + step["impute"]["missing_test"] == int(
        raw["lab"].isna().sum()
    )
    assert not np.isnan(p.features("train")).any()
    assert p.train["lab_missing"].sum() == step["impute"]["missing_train"]


def test_labels_are_int_zero_one(prepared) -> None:
    _, p, _, _ = prepared
    y = p.labels("test")
    assert y.dtype == np.int64 and set(np.unique(y)) <= {0, 1}


def test_meta_follows_the_interface(prepared) -> None:
    result, p, _, _ = prepared
    meta = json.loads((p.path / "meta.json").read_text())
    for key in (
        "dataset",
        "kind",
        "features",
        "label",
        "patient_id",
        "block",
        "sensitive",
        "blocks",
        "image_shape",
    ):
        assert key in meta
    assert meta["sensitive"] == ["sex", "age_band"]
    assert meta["blocks"] == result.blocks
    assert sum(meta["blocks"].values()) == p.train["patient_id"].nunique()
    assert set(p.train.columns) == {
        "patient_id",
        "block",
        "label",
        "sex",
        "age_band",
        *meta["features"],
    }


def test_data_version_is_the_dvc_md5_and_deterministic(tmp_path, prepared) -> None:
    result, p, data, contract = prepared
    assert result.data_version.endswith(".dir")
    assert p.meta["data_version"] == result.data_version == data_version(result.path)
    again = prepare(
        data, contract, out=tmp_path / "again", params=DataParams(seed=3), register=False
    )
    assert again.data_version == result.data_version


def test_another_pseudonym_key_gives_other_ids(tmp_path, prepared, monkeypatch) -> None:
    _, p, data, contract = prepared
    monkeypatch.setenv("DPGOV_PSEUDONYM_KEY", "a secret of the data owner")
    other = prepare(
        data, contract, out=tmp_path / "keyed", params=DataParams(seed=3), register=False
    )
    q = load_prepared(other.path)
    assert not set(q.train["patient_id"]) & set(p.train["patient_id"])
    assert q.meta["pseudonymisation"]["key"] == "env DPGOV_PSEUDONYM_KEY"


def test_adjacent_years_are_grouped_until_each_block_has_enough(tmp_path) -> None:
    data, contract = write_tabular(tmp_path / "raw", 600, dataset="grp", group_adjacent=True)
    table = pd.read_csv(data)
    # years 2001..2004 with about 120 training patients each: 200 patients per block
    result = prepare(
        data,
        contract,
        out=tmp_path / "out",
        params=DataParams(min_block_patients=200),
        register=False,
    )
    assert list(result.blocks) == ["2001-2002", "2003-2004"]
    assert all(n >= 200 for n in result.blocks.values())
    assert sorted(table["year"].unique()) == [2001, 2002, 2003, 2004]


def test_a_short_last_group_joins_the_one_before(tmp_path) -> None:
    data, contract = write_tabular(tmp_path / "raw", 600, dataset="grp", group_adjacent=True)
    result = prepare(
        data,
        contract,
        out=tmp_path / "out",
        params=DataParams(min_block_patients=300),
        register=False,
    )
    assert list(result.blocks) == ["2001-2004"]


def test_age_bands_are_labelled_by_edges() -> None:
    from dpgov.data.preparation import age_bands

    out = age_bands(pd.Series([10.0, 40.0, 59.9, 60.0, 75.0, np.nan]), [40, 60, 75])
    assert out.tolist() == ["<40", "40-59", "40-59", "60-74", "75+", "unknown"]


def test_a_feature_named_like_a_prepared_column_is_renamed(
    tmp_path, contract_dict, write_contract
) -> None:
    from dpgov.testing.sources import make_tabular

    table = make_tabular(100, n_blocks=1)
    table["sex"] = (table["sex"] == "M").astype(int)
    contract_dict["columns"]["sex"] = {"type": "integer", "allowed": [0, 1]}
    contract_dict["sensitive"] = {"age": "age"}
    table.to_csv(tmp_path / "d.csv", index=False)
    result = prepare(
        tmp_path / "d.csv", write_contract(contract_dict), out=tmp_path / "o", register=False
    )
    assert "sex_value" in result.features


def test_a_failure_before_commit_leaves_the_old_output(tmp_path, prepared) -> None:
    from dpgov.data.preparation import write_prepared

    result, p, _, _ = prepared
    before = data_version(result.path)

    def refuse(version: str) -> None:
        raise UsageError("ledger says no")

    with pytest.raises(UsageError, match="ledger says no"):
        write_prepared(p.path, p.train.head(3), p.test.head(3), {"x": 1}, {}, before_commit=refuse)
    assert data_version(result.path) == before
    assert sorted(x.name for x in p.path.parent.iterdir()) == ["out", "raw"]


def test_unusable_input_writes_nothing(tmp_path, contract_dict, write_contract) -> None:
    (tmp_path / "d.csv").write_text("patient_id,year\n")
    with pytest.raises(UsageError, match="empty"):
        prepare(
            tmp_path / "d.csv", write_contract(contract_dict), out=tmp_path / "o", register=False
        )
    assert not (tmp_path / "o").exists()


def test_images_prepare_into_the_same_form(tmp_path) -> None:
    npz, contract, meta = write_images(tmp_path / "raw", n_train=30, n_val=10, n_test=20)
    result = prepare(npz, contract, metadata=meta, out=tmp_path / "img", register=False)
    p = load_prepared(result.path)
    assert p.meta["kind"] == "image" and p.meta["image_shape"] == [1, 28, 28]
    assert len(p.train) == 40 and len(p.test) == 20  # train + val → train
    x = p.images("train")
    assert x.shape == (40, 1, 28, 28) and x.dtype == np.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert p.features("test", flat=True).shape == (20, 784)
    assert set(p.train.columns) == {
        "patient_id",
        "block",
        "label",
        "sex",
        "age_band",
        "image_index",
    }
    # the class-1 pattern (a bright square) survives the round trip
    bright = x[:, 0, 12:16, 12:16].mean(axis=(1, 2))
    assert bright[p.labels("train") == 1].mean() > bright[p.labels("train") == 0].mean() + 0.2


def test_images_without_metadata_are_one_block(tmp_path) -> None:
    npz, contract, _ = write_images(
        tmp_path / "raw", metadata=False, n_train=20, n_val=0, n_test=10
    )
    result = prepare(npz, contract, out=tmp_path / "img", register=False)
    assert result.blocks == {"all": 20}
    assert load_prepared(result.path).meta["sensitive"] == []


def test_select_blocks_names_an_unknown_block(prepared) -> None:
    _, p, _, _ = prepared
    with pytest.raises(UsageError, match="has no block '1890'"):
        p.select_blocks(["1890"])


def test_load_prepared_names_a_missing_folder(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"prepared data .*nowhere: no such folder"):
        load_prepared(tmp_path / "nowhere")
