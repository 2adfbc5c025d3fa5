"""The model registry: every model is Opacus-compatible as built."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from dpgov.errors import UsageError
from dpgov.training.models import MODELS, InputSpec, build_model
from dpgov.training.params import ModelParams

TABULAR = InputSpec(kind="tabular", n_features=7)
IMAGE = InputSpec(kind="image", n_features=3 * 12 * 12, image_shape=(3, 12, 12))


def test_registry_holds_the_three_models() -> None:
    assert set(MODELS) == {"mlp", "logreg", "cnn"}


@pytest.mark.parametrize(
    ("name", "spec", "shape"),
    [
        ("mlp", TABULAR, (5, 7)),
        ("logreg", TABULAR, (5, 7)),
        ("cnn", IMAGE, (5, 3, 12, 12)),
    ],
)
def test_each_model_gives_one_logit_per_example(
    name: str, spec: InputSpec, shape: tuple[int, ...]
) -> None:
    model = build_model(ModelParams(name=name), spec)
    assert model(torch.zeros(shape)).shape == (5,)


@pytest.mark.parametrize(("name", "spec"), [("mlp", TABULAR), ("cnn", IMAGE)])
def test_models_pass_opacus_validation(name: str, spec: InputSpec) -> None:
    assert ModuleValidator.validate(build_model(ModelParams(name=name), spec)) == []


def test_cnn_uses_group_norm_and_no_inplace_activation() -> None:
    model = build_model(ModelParams(name="cnn"), IMAGE)
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.GroupNorm in kinds
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_tabular_model_on_images_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"model\.name 'mlp' needs tabular data"):
        build_model(ModelParams(name="mlp"), IMAGE)


def test_cnn_on_tabular_data_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"model\.name 'cnn' needs image data"):
        build_model(ModelParams(name="cnn"), TABULAR)
