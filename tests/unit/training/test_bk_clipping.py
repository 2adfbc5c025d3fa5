"""Book-keeping clipping (issue 21 item 2) against Opacus's hooks mode, the reference.

Per layer type (Linear 2-D and 3-D, Conv2d, GroupNorm, LayerNorm, Embedding), on a fixed
batch with C well below every example's gradient norm (clipping binds for all of them), the
clipped summed gradient that book-keeping leaves after its one backward pass equals the one
Opacus's DPOptimizer forms from hooks mode's materialised per-example gradients. Both the ghost
norm branch and the per-example branch of Linear and Conv2d are exercised. End to end, a run
through dpgov's train_private with ``bk`` charges the planned mechanism and, with the same
(reproducible) masks and noise, trains the same weights as hooks mode."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from dpgov.errors import UsageError
from dpgov.training import bk_clipping, bk_opacus, trainer
from dpgov.training.clipping_modes import choose_mode, mode_reason
from dpgov.training.models import InputSpec, build_model
from dpgov.training.params import ModelParams, TrainParams

N = 8  # examples in the fixed batch
CPU = torch.device("cpu")


class _Residual(nn.Module):
    """A hooked layer's output modified in place (ResNets' ``out += identity``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y += x
        return self.b(torch.tanh(y)).reshape(-1)


class _Embed(nn.Module):
    def __init__(self, padding_idx: int | None = None) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4, padding_idx=padding_idx)
        self.head = nn.Linear(12, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).reshape(len(ids), -1)).reshape(-1)


def _seq(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers, nn.Flatten(start_dim=0))


def _case(name: str) -> tuple[nn.Module, torch.Tensor, type]:
    """(model, input batch, the layer type under test) for ``name``."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn(N, 2, 6, 6, generator=g)
    if name == "linear":
        return _seq(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1)), torch.randn(N, 5), nn.Linear
    layers: tuple[nn.Module, ...]
    if name == "linear_seq_ghost":  # T = 2 tokens, d = p = 16: ghost norm
        x = torch.randn(N, 2, 16, generator=g)
        layers = (nn.Linear(16, 16), nn.Tanh(), nn.Flatten(), nn.Linear(32, 1))
        return _seq(*layers), x, nn.Linear
    if name == "linear_seq_per_example":  # T = 6, d = 3, p = 2: per-example gradient
        x = torch.randn(N, 6, 3, generator=g)
        return _seq(nn.Linear(3, 2), nn.Flatten(), nn.Linear(12, 1)), x, nn.Linear
    if name == "conv_per_example":  # L = 36 output pixels, d = 18, p = 4
        layers = (nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(144, 1))
        return _seq(*layers), img, nn.Conv2d
    if name == "conv_ghost":  # stride 3: L = 4, d = 18, p = 16: ghost norm
        layers = (nn.Conv2d(2, 16, 3, stride=3, padding=1), nn.Flatten(), nn.Linear(64, 1))
        return _seq(*layers), img, nn.Conv2d
    if name == "conv_wide":  # L = 16: per-example norm, but the sum from a and b (less memory)
        x = torch.randn(N, 8, 4, 4, generator=g)
        layers = (nn.Conv2d(8, 16, 3, padding=1), nn.Flatten(), nn.Linear(256, 1))
        return _seq(*layers), x, nn.Conv2d
    if name == "conv_groups":
        layers = (nn.Conv2d(2, 4, 3, groups=2, bias=False), nn.Flatten(), nn.Linear(64, 1))
        return _seq(*layers), img, nn.Conv2d
    if name == "groupnorm":
        layers = (
            nn.Conv2d(2, 4, 3),
            nn.GroupNorm(2, 4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64, 1),
        )
        return _seq(*layers), img, nn.GroupNorm
    if name == "layernorm":
        x = torch.randn(N, 3, 5, generator=g)
        layers = (nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Flatten(), nn.Linear(18, 1))
        return _seq(*layers), x, nn.LayerNorm
    if name == "embedding":  # repeated ids inside an example: the ghost aggregation
        ids = torch.randint(0, 10, (N, 3), generator=g)
        ids[:, 2] = ids[:, 0]
        return _Embed(), ids, nn.Embedding
    if name == "residual_inplace":
        return _Residual(), torch.randn(N, 5, generator=g), nn.Linear
    if name == "embedding_padding":
        ids = torch.randint(0, 10, (N, 3), generator=g)
        ids[:, 1] = 0
        return _Embed(padding_idx=0), ids, nn.Embedding
    raise KeyError(name)


CASES = [  # (Opacus's hooks cannot take residual_inplace: its hooked outputs are views)
    "linear",
    "linear_seq_ghost",
    "linear_seq_per_example",
    "conv_per_example",
    "conv_ghost",
    "conv_wide",
    "conv_groups",
    "groupnorm",
    "layernorm",
    "embedding",
]


def _loss(out: torch.Tensor) -> torch.Tensor:
    y = (torch.arange(N) % 2).float()
    return nn.functional.binary_cross_entropy_with_logits(out, y)


def _hooks_clipped(model: nn.Module, x: torch.Tensor, c: float) -> tuple[list[Any], Any]:
    """Opacus's own clipped sum (hooks mode, DPOptimizer.clip_and_accumulate), and norms."""
    gsm = GradSampleModule(model)
    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=c,
        expected_batch_size=N,
    )
    _loss(gsm(x)).backward()
    norms = torch.stack([g.reshape(N, -1).norm(dim=1) for g in opt.grad_samples], 1).norm(dim=1)
    opt.clip_and_accumulate()
    return [p.summed_grad.clone() for p in opt.params], norms


def _bk_clipped(model: nn.Module, x: torch.Tensor, c: float) -> tuple[list[Any], Any]:
    gsm_cls, opt_cls, _engine = bk_opacus.bk_classes()
    gsm = gsm_cls(model, max_grad_norm=c)
    opt = opt_cls(
        torch.optim.SGD(gsm.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=c,
        expected_batch_size=N,
    )
    _loss(gsm(x)).backward()  # the one backward pass leaves the clipped sums
    opt.clip_and_accumulate()
    return [p.summed_grad.clone() for p in opt.params], gsm.per_sample_gradient_norms


@pytest.mark.parametrize("name", CASES)
def test_clipped_sum_equals_opacus_hooks_with_clipping_binding(name: str) -> None:
    torch.manual_seed(1)
    model, x, kind = _case(name)
    assert any(type(m) is kind for m in model.modules())
    _, norms = _hooks_clipped(copy.deepcopy(model), x, 1.0)
    c = float(norms.min()) / 10  # every example clipped, by a factor of 10 or more
    expected, ref_norms = _hooks_clipped(copy.deepcopy(model), x, c)
    got, bk_norms = _bk_clipped(copy.deepcopy(model), x, c)
    assert bool((ref_norms > 5 * c).all())
    torch.testing.assert_close(bk_norms, ref_norms, rtol=1e-4, atol=1e-6)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    # not the unclipped sum: clipping changed the gradient
    total = sum(float(e.norm()) for e in expected)
    assert total <= N * c * 1.0001


@pytest.mark.parametrize(
    "name",
    [
        "groupnorm",
        "conv_ghost",
        "linear_seq_ghost",
        "layernorm",
        "embedding_padding",
        "residual_inplace",
    ],
)
def test_unclipped_examples_sum_to_autograds_gradient(name: str) -> None:
    # C far above every norm: c_i = 1, the clipped sum is N × the mean loss's gradient (and
    # an embedding's padding row gets none, as in autograd)
    model, x, _ = _case(name)
    got, _ = _bk_clipped(copy.deepcopy(model), x, 1e6)
    plain = copy.deepcopy(model)
    _loss(plain(x)).backward()
    for g, p in zip(got, plain.parameters(), strict=True):
        assert p.grad is not None
        torch.testing.assert_close(g, N * p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "from_a_and_b"),
    [
        ("conv_ghost", True),  # ghost norm; the sum from a and b
        ("conv_wide", True),  # per-example norm; n weight-sized gradients would be larger
        ("conv_per_example", False),  # per-example gradients kept: smaller than a and b
        ("conv_groups", False),
    ],
)
def test_conv_keeps_the_cheaper_of_its_inputs_or_per_example_gradients(
    name: str, from_a_and_b: bool
) -> None:
    model, x, _ = _case(name)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    a = x.float()
    b = torch.ones_like(conv(a))
    layer = bk_clipping._conv(conv, a, b)
    assert (layer.activation is not None) is from_a_and_b
    assert (conv.weight in layer.per_example) is not from_a_and_b


def test_support_names_the_first_layer_bk_cannot_clip() -> None:
    assert bk_clipping.first_without_bk(_case("groupnorm")[0]) is None
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    assert bk_clipping.first_without_bk(model) == (
        "1",
        "BatchNorm1d",
        "BatchNorm1d has no book-keeping rule",
    )
    model[1].requires_grad_(False)  # frozen: nothing to clip there
    assert bk_clipping.supports_bk(model)
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    assert bk_clipping.first_without_bk(tied) is not None
    reflect = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")
    assert not bk_clipping.supports_bk(reflect)


def test_a_module_used_twice_in_one_forward_is_refused() -> None:
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    gsm_cls, _, _ = bk_opacus.bk_classes()
    gsm = gsm_cls(model, max_grad_norm=1.0)
    with pytest.raises(NotImplementedError, match="twice"):
        gsm(torch.randn(2, 3))


def _dp_run(
    mode: str, n: int = 96, batch: int = 16, physical: int = 256
) -> tuple[Any, trainer.SamplingPlan]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    cfg = TrainParams(
        seed=7,
        batch_size=batch,
        learning_rate=0.5,
        reproducible_noise=True,
        epochs=2,
        max_physical_batch_size=physical,
    )
    trainer.seed_everything(cfg.seed)
    model = build_model(ModelParams(name="mlp", hidden=[8]), InputSpec("tabular", 4))
    plan = trainer.sampling_plan(n=n, batch_size=batch, epochs=2)
    res = trainer.train_private(
        model,
        x,
        y,
        plan=plan,
        noise_multiplier=1.5,
        max_grad_norm=0.05,  # binding for most examples
        cfg=cfg,
        device=CPU,
        grad_sample_mode=mode,
    )
    return res, plan


def test_train_private_with_bk_charges_the_plan_and_trains_what_hooks_trains() -> None:
    bk, plan = _dp_run("bk")
    assert bk.grad_sample_mode == "bk" and bk.steps == plan.steps == 12
    assert bk.history == [(1.5, plan.sample_rate, plan.steps)]
    trainer.check_history(
        bk.history, noise_multiplier=1.5, sample_rate=plan.sample_rate, steps=plan.steps
    )
    hooks, _ = _dp_run("hooks")  # same masks, same noise: the same weights
    assert hooks.history == bk.history
    for a, b in zip(bk.model.parameters(), hooks.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not any(hasattr(p, "bk_clipped") for p in bk.model.parameters())  # cleaned up


def test_physical_batches_of_one_logical_step_are_summed_as_in_hooks() -> None:
    # BatchMemoryManager cuts each Poisson batch (≈ 16) into physical batches of 4
    bk, plan = _dp_run("bk", physical=4)
    assert bk.history == [(1.5, plan.sample_rate, plan.steps)]
    hooks, _ = _dp_run("hooks", physical=4)
    for a, b in zip(bk.model.parameters(), hooks.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_empty_poisson_batches_are_noised_steps_as_in_hooks() -> None:
    # q = 1/20 over 20 rows: about a third of the 40 steps have no example
    bk, plan = _dp_run("bk", n=20, batch=1)
    assert bk.steps == plan.steps == 40 and bk.history == [(1.5, 1 / 20, 40)]
    hooks, _ = _dp_run("hooks", n=20, batch=1)
    for a, b in zip(bk.model.parameters(), hooks.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad for p in bk.model.parameters())


def test_resnet18_groupnorm_through_the_factory_matches_hooks() -> None:
    # the ResNet-18 a team brings (MONAI's, BatchNorm → GroupNorm by dpgov's factory):
    # strided and 1×1 convolutions, both norm branches, residual additions
    pytest.importorskip("monai")
    from dpgov.training.params import parse_params

    cfg = parse_params(
        {
            "model": {
                "factory": "monai.networks.nets:resnet18",
                "kwargs": {"spatial_dims": 2, "n_input_channels": 1, "num_classes": 1},
            }
        }
    )
    spec = InputSpec(kind="image", n_features=256, image_shape=(1, 16, 16))
    torch.manual_seed(0)
    inner = build_model(cfg.model, spec, allowed_factories=["monai.networks.nets:*"])
    model = nn.Sequential(inner, nn.Flatten(start_dim=0))
    assert bk_clipping.supports_bk(model) and choose_mode("auto", model) == "bk"
    x = torch.randn(N, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    expected, norms = _hooks_clipped(copy.deepcopy(model), x, 1e-3)
    assert bool((norms > 1e-2).all())
    got, _ = _bk_clipped(copy.deepcopy(model), x, 1e-3)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-7)


def test_auto_chooses_bk_where_every_layer_has_a_rule_and_says_why() -> None:
    cnn = build_model(
        ModelParams(name="cnn", channels=[4]), InputSpec("image", 64, image_shape=(1, 8, 8))
    )
    assert choose_mode("auto", cnn) == "bk"
    reason = mode_reason("auto", "bk", cnn)
    assert reason.startswith("auto chose bk") and "Conv2d, GroupNorm, Linear" in reason
    assert len(reason) < 250
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 1))
    mode = choose_mode("auto", bn)
    assert mode == "hooks"
    reason = mode_reason("auto", mode, bn)
    assert "bk: layer 1 (BatchNorm2d) has no rule" in reason and len(reason) < 250
    with pytest.raises(UsageError, match=r"'bk' cannot clip layer 1 \(BatchNorm2d\)"):
        choose_mode("bk", bn)
    assert choose_mode("bk", cnn) == "bk" and choose_mode("hooks", cnn) == "hooks"
    assert mode_reason("bk", "bk", cnn) == "bk: asked for (train.grad_sample_mode: bk)"
