"""Why auto chose a grad-sample mode (issue 21): one line per rule, naming the layer that
ruled ghost clipping out; the same choice as trainer.choose_grad_sample_mode."""

from __future__ import annotations

import pytest
from torch import nn

from dpgov.training.clipping_modes import first_without_ghost, mode_reason
from dpgov.training.models import InputSpec, build_model
from dpgov.training.params import ModelParams
from dpgov.training.trainer import choose_grad_sample_mode


def _mlp() -> nn.Module:
    return build_model(ModelParams(name="mlp", hidden=[8]), InputSpec(kind="tabular", n_features=4))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))


def test_auto_on_an_mlp_is_ghost_and_says_every_layer_has_a_norm_sampler() -> None:
    model = _mlp()
    mode = choose_grad_sample_mode("auto", model)
    assert mode == "ghost" and first_without_ghost(model) is None
    reason = mode_reason("auto", mode, model)
    assert reason.startswith("auto chose ghost") and "Linear" in reason


def test_auto_on_a_cnn_is_hooks_and_names_the_conv_layer() -> None:
    model = _cnn()
    mode = choose_grad_sample_mode("auto", model)
    assert mode == "hooks" and first_without_ghost(model) == ("0", "Conv2d")
    reason = mode_reason("auto", mode, model)
    assert reason.startswith("auto chose hooks") and "layer 0 (Conv2d)" in reason


def test_frozen_layers_do_not_rule_ghost_out() -> None:
    model = _cnn()
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert choose_grad_sample_mode("auto", model) == "ghost"
    assert first_without_ghost(model) is None


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"precision": "amp"}, "amp"),
        ({"patient_level": True}, "patient-level"),
    ],
)
def test_amp_and_patient_level_reasons(kw: dict[str, object], words: str) -> None:
    reason = mode_reason("auto", "hooks", _mlp(), **kw)  # type: ignore[arg-type]
    assert reason.startswith("auto chose hooks") and words in reason


def test_an_explicit_mode_says_it_was_asked_for() -> None:
    expected = "hooks: asked for (train.grad_sample_mode: hooks)"
    assert mode_reason("hooks", "hooks", _mlp()) == expected


def test_reasons_fit_one_line_and_an_mlflow_param() -> None:
    for model in (_mlp(), _cnn()):
        reason = mode_reason("auto", choose_grad_sample_mode("auto", model), model)
        assert "\n" not in reason and len(reason) < 250
