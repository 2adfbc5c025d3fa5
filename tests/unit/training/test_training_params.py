"""The params schema: unknown keys, models, devices and sampling are rejected in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpgov.errors import UsageError
from dpgov.training.params import (
    embedded_params_path,
    load_params,
    parse_params,
    prepared_path,
)

REPO = Path(__file__).resolve().parents[3]


def test_embedded_defaults_are_valid() -> None:
    params = load_params(embedded_params_path())
    assert params.model.name == "mlp"
    assert params.train.sampling == "poisson"


def test_repository_params_yaml_is_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert prepared_path(params) == Path("data/prepared") / params.data["dataset"]


def test_unknown_train_key_is_rejected() -> None:
    with pytest.raises(UsageError, match=r"train\.epoch: Extra inputs are not permitted"):
        parse_params({"train": {"epoch": 3}})


def test_unknown_top_level_key_is_rejected() -> None:
    with pytest.raises(UsageError, match=r"trian: Extra inputs"):
        parse_params({"trian": {}})


def test_unknown_model_is_rejected_naming_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"model\.name: unknown model 'resnet'; known: cnn"):
        parse_params({"model": {"name": "resnet"}})


def test_unknown_device_is_rejected() -> None:
    with pytest.raises(UsageError, match=r"train\.device: unknown device 'tpu'"):
        parse_params({"train": {"device": "tpu"}})


def test_shuffled_sampling_is_refused_because_accounting_assumes_poisson() -> None:
    with pytest.raises(UsageError, match=r"train\.sampling: only 'poisson'.*ε wrong"):
        parse_params({"train": {"sampling": "shuffle"}})


def test_non_positive_noise_multiplier_is_rejected() -> None:
    with pytest.raises(UsageError, match=r"train\.noise_multiplier"):
        parse_params({"train": {"noise_multiplier": 0}})


def test_threshold_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(UsageError, match=r"train\.threshold"):
        parse_params({"train": {"threshold": 1.5}})


def test_unreadable_params_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"params .*missing\.yaml: cannot read"):
        load_params(tmp_path / "missing.yaml")


def test_data_section_passes_through_untouched() -> None:
    params = parse_params({"data": {"dataset": "mine", "anything": 1}})
    assert prepared_path(params) == Path("data/prepared/mine")
