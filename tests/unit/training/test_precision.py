"""Mixed precision kept safe for DP (``train.precision: amp``): under bfloat16 autocast the
per-sample norms, the clipping and the noise stay in float32, so clipped per-sample
gradients never exceed C (checked against the bfloat16 path, which does exceed it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from dpgov.errors import UsageError
from dpgov.training.params import TrainParams
from dpgov.training.precision import autocast, check_precision, grad_samples_to_fp32
from dpgov.training.trainer import sampling_plan, train_private

C = 0.05
CPU = torch.device("cpu")


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 1),
        nn.Flatten(0),
    )


def _clipped_norms(*, to_fp32: bool, n: int = 64) -> list[float]:
    """Each example's clipped gradient norm as Opacus's optimizer accumulates it (one example
    per step, noise off), the forward under bfloat16 autocast."""
    torch.manual_seed(0)
    model = _net()
    gsm = GradSampleModule(model)
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=1,
    )
    x = torch.randn(n, 1, 8, 8) * 5
    y = (torch.rand(n) > 0.5).float()
    norms = []
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        with autocast("amp", CPU):
            out = gsm(x[i : i + 1])
        assert out.dtype == torch.bfloat16  # autocast is really on
        nn.functional.binary_cross_entropy_with_logits(out.float(), y[i : i + 1]).backward()
        if to_fp32:
            assert grad_samples_to_fp32(opt.params) == len(opt.params)
            assert all(p.grad_sample.dtype == torch.float32 for p in opt.params)
        opt.clip_and_accumulate()
        total = sum(float((p.summed_grad.double() ** 2).sum()) for p in opt.params)
        norms.append(total**0.5)
    gsm._close()
    return norms


def test_amp_clipped_per_sample_norms_stay_within_c() -> None:
    norms = _clipped_norms(to_fp32=True)
    assert max(norms) <= C * (1 + 1e-5)
    assert sum(nrm > 0.99 * C for nrm in norms) > len(norms) // 2  # clipping binds


def test_without_the_fp32_cast_bfloat16_norms_let_clipped_gradients_exceed_c() -> None:
    """What the cast prevents (the test above would fail without it): bfloat16 norms."""
    assert max(_clipped_norms(to_fp32=False)) > C * (1 + 1e-3)


def test_amp_needs_hooks() -> None:
    assert check_precision("amp", "auto", "ghost") == "hooks"
    assert check_precision("fp32", "auto", "ghost") == "ghost"
    with pytest.raises(UsageError, match="amp needs grad_sample_mode hooks"):
        check_precision("amp", "ghost", "ghost")
    with pytest.raises(UsageError, match="unknown 'fp16'"):
        check_precision("fp16", "auto", "hooks")


def test_train_private_under_amp_runs_the_planned_mechanism() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 1, 8, 8)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.float32)
    cfg = TrainParams(precision="amp", reproducible_noise=True, learning_rate=0.5)
    plan = sampling_plan(n=32, batch_size=8, epochs=1)
    model = _net()
    before = [p.detach().clone() for p in model.parameters()]
    result = train_private(
        model,
        x,
        y,
        plan=plan,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        cfg=cfg,
        device=CPU,
        grad_sample_mode="hooks",
    )
    assert result.history == [(1.0, plan.sample_rate, plan.steps)]
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert any(
        not torch.equal(a, b) for a, b in zip(before, result.model.parameters(), strict=True)
    )
    with pytest.raises(UsageError, match="amp needs grad_sample_mode hooks"):
        train_private(
            _net(),
            x,
            y,
            plan=plan,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            cfg=cfg,
            device=CPU,
            grad_sample_mode="ghost",
        )
