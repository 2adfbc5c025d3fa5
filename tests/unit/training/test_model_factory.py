"""Your own model (``model.factory``): the policy's allow-list, imports, weights and their
SHA-256, BatchNorm → GroupNorm or frozen, trainable prefixes, Opacus's refusal, one DP step."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpgov.errors import UsageError
from dpgov.training.factory import report_of
from dpgov.training.models import InputSpec, build_model
from dpgov.training.params import TrainParams, parse_params
from dpgov.training.trainer import sampling_plan, train_private

SPEC = InputSpec(kind="image", n_features=64, image_shape=(1, 8, 8))
TOY = "dpgov.testing.models:tiny_bn_net"
ALLOW = ["dpgov.testing.models:*"]


def _cfg(**model: object):
    return parse_params({"model": {"factory": TOY, **model}}).model


def _images(n: int, side: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, side, side)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.float32)
    return x, y


def _dp_step(model: nn.Module, x: np.ndarray, y: np.ndarray, *, steps_epochs: int = 1):
    cfg = TrainParams(learning_rate=0.5, max_physical_batch_size=64, reproducible_noise=True)
    plan = sampling_plan(n=len(y), batch_size=len(y) // 2, epochs=steps_epochs)
    return train_private(
        model,
        x,
        y,
        plan=plan,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        cfg=cfg,
        device=torch.device("cpu"),
        grad_sample_mode="hooks",
    )


def test_a_factory_not_allow_listed_is_refused_before_it_is_imported() -> None:
    cfg = parse_params({"model": {"factory": "dpgov_never_imported_pkg:make"}}).model
    for allowed in (None, [], ["dpgov.testing.models:*"]):
        with pytest.raises(UsageError, match="is not allowed by the policy in force") as err:
            build_model(cfg, SPEC, allowed_factories=allowed)
        assert "release.allowed_model_factories" in str(err.value)
    assert "dpgov_never_imported_pkg" not in sys.modules


@pytest.mark.parametrize(
    "factory", ["dpgov.testing.models:Any.__init__", "dpgov.testing.models:_private", "m:a-b"]
)
def test_a_pattern_ending_in_star_admits_one_public_name_only(factory: str) -> None:
    """``mod:*`` must not reach past the module's own names (``mod:os.system``)."""
    cfg = parse_params({"model": {"factory": factory}}).model
    with pytest.raises(UsageError, match="one public function name"):
        build_model(cfg, SPEC, allowed_factories=["dpgov.testing.models:*", "m:*"])


def test_allow_list_patterns_match_whole_names() -> None:
    from dpgov.training.factory import allowed

    assert allowed("torchvision.models:resnet18", ["torchvision.models:*"])
    assert not allowed("torchvision.models.detection:fasterrcnn", ["torchvision.models:*"])
    assert not allowed("os:system", ["torchvision.models:*", "monai.networks.nets:*"])


def test_policy_rejects_an_allow_list_pattern_without_a_package(tmp_path) -> None:
    from dpgov.policy.schema import Release

    with pytest.raises(ValueError, match="must name its package"):
        Release(allowed_model_factories=["*:*"])
    assert Release().allowed_model_factories == []


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("dpgov_no_such_package.nets:make", "module 'dpgov_no_such_package.nets' does not import"),
        ("dpgov.testing.models:no_such_function", "has no attribute 'no_such_function'"),
        ("dpgov.testing.models:not_a_module", "returned a dict, not a module"),
        ("dpgov.testing.models", "expected 'package.module:function'"),
    ],
)
def test_a_bad_factory_is_a_usage_error(factory: str, message: str) -> None:
    cfg = parse_params({"model": {"factory": factory}}).model
    with pytest.raises(UsageError, match=message):
        build_model(cfg, SPEC, allowed_factories=["dpgov*"])


@pytest.mark.parametrize("kwargs", [{"pretrained": True}, {"weights": "IMAGENET1K_V1"}])
def test_weights_the_factory_would_fetch_itself_are_refused(kwargs: dict) -> None:
    with pytest.raises(UsageError, match=r"give them as model\.weights with model\.weights_sha256"):
        build_model(_cfg(kwargs=kwargs), SPEC, allowed_factories=ALLOW)


def test_bad_kwargs_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"model\.kwargs: dpgov\.testing\.models:tiny_bn_net"):
        build_model(_cfg(kwargs={"colour": 3}), SPEC, allowed_factories=ALLOW)


def test_params_refuse_factory_keys_without_a_factory_and_weights_without_a_hash() -> None:
    with pytest.raises(UsageError, match=r"model\.weights needs model\.factory"):
        parse_params({"model": {"name": "cnn", "weights": "w.pt"}})
    with pytest.raises(UsageError, match=r"needs model\.weights_sha256"):
        parse_params({"model": {"factory": TOY, "weights": "w.pt"}})
    with pytest.raises(UsageError, match=r"model\.name 'cnn' and model\.factory both given"):
        parse_params({"model": {"name": "cnn", "factory": TOY}})


def test_groupnorm_replaces_batchnorm_and_the_change_is_reported() -> None:
    model = build_model(_cfg(kwargs={"classes": 1}), SPEC, allowed_factories=ALLOW)
    kinds = [type(m).__name__ for m in model.modules()]
    assert "BatchNorm2d" not in kinds and "GroupNorm" in kinds
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    report = report_of(model)
    assert report is not None and report.batchnorm_replaced == ("1",)
    assert report.params()["model.batchnorm_replaced"] == 1
    assert any("1 BatchNorm → GroupNorm: 1" in line for line in report.change_lines())
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5,)


def test_a_multi_class_output_needs_a_head_and_the_head_gives_one_logit() -> None:
    with pytest.raises(UsageError, match=r"not one logit per example; set model\.head"):
        build_model(_cfg(), SPEC, allowed_factories=ALLOW)  # 3 classes, no head
    model = build_model(_cfg(head="5"), SPEC, allowed_factories=ALLOW)
    assert model.net[5].out_features == 1
    with pytest.raises(UsageError, match=r"model\.head: '1' is a BatchNorm2d, not a Linear"):
        build_model(_cfg(head="1"), SPEC, allowed_factories=ALLOW)


def test_a_model_opacus_cannot_make_private_is_refused_naming_the_module() -> None:
    cfg = parse_params({"model": {"factory": "dpgov.testing.models:tiny_unprivate_net"}}).model
    with pytest.raises(UsageError, match=r"Opacus cannot make module 'net\.2' \(Scaled\)"):
        build_model(cfg, SPEC, allowed_factories=ALLOW)


def _weights(tmp_path, **kwargs) -> tuple[str, str, dict[str, torch.Tensor]]:
    from dpgov.testing.models import tiny_bn_net

    torch.manual_seed(7)
    pre = tiny_bn_net(**kwargs)
    bn = pre[1]
    c = bn.num_features
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0])[:c])
    bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 9.0])[:c])
    state = {k: v.clone() for k, v in pre.state_dict().items()}
    path = tmp_path / "public.pt"
    torch.save(state, path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest(), state


def test_weights_are_loaded_only_with_their_sha256(tmp_path) -> None:
    path, sha, state = _weights(tmp_path)
    wrong = "0" * 64
    with pytest.raises(UsageError, match=f"sha256 of .* is {sha}, not model.weights_sha256"):
        build_model(
            _cfg(weights=path, weights_sha256=wrong, head="5"), SPEC, allowed_factories=ALLOW
        )
    cfg = _cfg(weights=path, weights_sha256=sha, weights_origin="toy public set", head="5")
    model = build_model(cfg, SPEC, allowed_factories=ALLOW)
    assert torch.equal(model.net[0].weight, state["0.weight"])
    report = report_of(model)
    assert report is not None and report.params()["model.weights_sha256"] == sha
    assert report.statement()["weights"] == {
        "path": path,
        "sha256": sha,
        "origin": "toy public set",
    }
    from dpgov.training.factory import model_sentence

    assert f"sha256 {sha}" in model_sentence(report.statement())
    missing = _cfg(weights=str(tmp_path / "none.pt"), weights_sha256=sha, head="5")
    with pytest.raises(UsageError, match="is not a readable file"):
        build_model(missing, SPEC, allowed_factories=ALLOW)


def test_weights_of_another_architecture_are_a_usage_error(tmp_path) -> None:
    path, sha, _ = _weights(tmp_path, width=2)
    with pytest.raises(UsageError, match="does not fit the factory's model"):
        build_model(_cfg(weights=path, weights_sha256=sha, head="5"), SPEC, allowed_factories=ALLOW)


def test_frozen_batchnorm_keeps_pretrained_statistics_through_dp_training(tmp_path) -> None:
    path, sha, state = _weights(tmp_path)
    cfg = _cfg(weights=path, weights_sha256=sha, head="5", batchnorm="frozen")
    model = build_model(cfg, SPEC, allowed_factories=ALLOW)
    frozen = model.net[1]
    assert type(frozen).__name__ == "FrozenBatchNorm"
    assert list(frozen.parameters()) == []  # nothing in it trains
    x, y = _images(32)
    result = _dp_step(model, x, y, steps_epochs=2)
    assert result.steps >= 2
    bn = result.model.net[1]
    for key in ("running_mean", "running_var", "weight", "bias"):
        assert torch.equal(getattr(bn, key), state[f"1.{key}"]), key
    # in training mode it is still a per-example function (no batch statistics)
    result.model.train()
    one = result.model(torch.as_tensor(x[:1]))
    many = result.model(torch.as_tensor(x[:8]))
    assert torch.allclose(one, many[:1], atol=1e-6)


def test_frozen_batchnorm_trains_the_rest() -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(head="5", batchnorm="frozen"), SPEC, allowed_factories=ALLOW)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = _images(32)
    result = _dp_step(model, x, y)
    after = dict(result.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_trainable_prefixes_freeze_the_rest_and_opacus_clips_only_the_trained() -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(head="5", trainable=["5"]), SPEC, allowed_factories=ALLOW)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"net.5.weight", "net.5.bias"}
    report = report_of(model)
    assert report is not None and report.n_trainable == 4 * 1 + 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    x, y = _images(32)
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=16)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    engine = PrivacyEngine(accountant="rdp")
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    assert {id(p) for p in dp_opt.params} == {
        id(p) for n, p in model.named_parameters() if n in trained
    }
    for xb, yb in dp_loader:
        dp_opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(dp_model(xb), yb).backward()
        assert all(
            getattr(p, "grad_sample", None) is None
            for n, p in model.named_parameters()
            if n not in trained
        )
        dp_opt.step()
        break
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in trained), n


def test_trainable_prefix_matching_nothing_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no parameter name starts with 'layer9'"):
        build_model(_cfg(head="5", trainable=["layer9"]), SPEC, allowed_factories=ALLOW)


def _monai_resnet18():
    try:
        from monai.networks import nets  # noqa: F401
    except Exception as err:  # absent, or a build that does not load
        pytest.skip(f"monai is not usable here ({type(err).__name__}); the imaging extra has it")


def test_monai_resnet18_with_groupnorm_takes_one_dp_step_at_16x16() -> None:
    _monai_resnet18()
    spec = InputSpec(kind="image", n_features=256, image_shape=(1, 16, 16))
    cfg = parse_params(
        {
            "model": {
                "factory": "monai.networks.nets:resnet18",
                "kwargs": {"spatial_dims": 2, "n_input_channels": 1, "num_classes": 1},
                "batchnorm": "groupnorm",
            }
        }
    ).model
    model = build_model(cfg, spec, allowed_factories=["monai.networks.nets:*"])
    report = report_of(model)
    assert report is not None and len(report.batchnorm_replaced) == 20
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x, y = _images(16, side=16)
    before = model.net.fc.weight.detach().clone()
    result = _dp_step(model, x, y)
    assert result.steps >= 1 and result.history[0][2] == result.steps
    assert not torch.equal(result.model.net.fc.weight, before)


def test_torchvision_resnet18_when_torchvision_loads() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # PyPI's torchvision is CUDA-linked: it fails on a CPU torch
        pytest.skip(f"torchvision is not usable with this torch ({type(err).__name__})")
    spec = InputSpec(kind="image", n_features=768, image_shape=(3, 16, 16))
    cfg = parse_params(
        {"model": {"factory": "torchvision.models:resnet18", "kwargs": {"num_classes": 1}}}
    ).model
    model = build_model(cfg, spec, allowed_factories=["torchvision.models:*"])
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2,)
