"""The Opacus trainer: sampling as Opacus runs it, devices, modes, and private = ordinary
gradients when noise and clipping are off."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from dpgov.errors import UsageError
from dpgov.training.models import InputSpec, build_model
from dpgov.training.params import ModelParams, TrainParams
from dpgov.training.trainer import (
    StepCounter,
    check_history,
    choose_grad_sample_mode,
    resolve_device,
    sampling_plan,
    train_private,
)

SPEC = InputSpec(kind="tabular", n_features=4)


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    return x, y


@pytest.mark.parametrize(("n", "batch"), [(100, 10), (6143, 256), (1000, 3), (50, 50), (97, 7)])
def test_sampling_plan_matches_what_opacus_runs(n: int, batch: int) -> None:
    plan = sampling_plan(n=n, batch_size=batch, epochs=2)
    loader = DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch)
    dp_loader = DPDataLoader.from_data_loader(loader)
    assert dp_loader.sample_rate == plan.sample_rate
    assert len(dp_loader) == plan.steps_per_epoch
    assert plan.steps == 2 * plan.steps_per_epoch


def test_batch_larger_than_the_data_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"train\.batch_size: 500 is more than the 100"):
        sampling_plan(n=100, batch_size=500, epochs=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="'cuda' requested but no CUDA device is available"):
        resolve_device("cuda")


def test_auto_device_is_cuda_when_present_else_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_auto_mode_is_ghost_for_the_mlp_and_hooks_for_the_cnn() -> None:
    mlp = build_model(ModelParams(name="mlp"), SPEC)
    cnn = build_model(
        ModelParams(name="cnn"), InputSpec(kind="image", n_features=64, image_shape=(1, 8, 8))
    )
    assert choose_grad_sample_mode("auto", mlp) == "ghost"
    assert choose_grad_sample_mode("auto", cnn) == "hooks"


def test_ghost_on_a_model_without_support_is_a_usage_error() -> None:
    cnn = build_model(
        ModelParams(name="cnn"), InputSpec(kind="image", n_features=64, image_shape=(1, 8, 8))
    )
    with pytest.raises(UsageError, match="'ghost' needs ghost-clipping support"):
        choose_grad_sample_mode("ghost", cnn)


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_private_training_equals_ordinary_with_noise_and_clipping_off(mode: str) -> None:
    # q = 1: every Poisson batch is the whole data set, so DP-SGD with σ = 0 and a clipping
    # norm no gradient reaches must take exactly the steps of full-batch gradient descent,
    # even when BatchMemoryManager splits each batch into physical batches of 16.
    x, y = _data(64)
    torch.manual_seed(0)
    model = build_model(ModelParams(name="mlp", hidden=[8]), SPEC)
    plain = copy.deepcopy(model)
    cfg = TrainParams(batch_size=64, epochs=3, learning_rate=0.3, max_physical_batch_size=16)
    plan = sampling_plan(n=64, batch_size=64, epochs=3)
    assert plan.sample_rate == 1.0
    private = train_private(
        model,
        x,
        y,
        plan=plan,
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        cfg=cfg,
        device=torch.device("cpu"),
        grad_sample_mode=mode,
    ).model

    opt = torch.optim.SGD(plain.parameters(), lr=0.3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(plain(xt), yt).backward()
        opt.step()
    for p_private, p_plain in zip(private.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p_private, p_plain, rtol=1e-5, atol=1e-6)


def test_opacus_history_is_the_planned_mechanism() -> None:
    x, y = _data(120)
    cfg = TrainParams(batch_size=12, epochs=2, max_physical_batch_size=5)
    plan = sampling_plan(n=120, batch_size=12, epochs=2)
    counter = StepCounter()
    result = train_private(
        build_model(ModelParams(name="logreg"), SPEC),
        x,
        y,
        plan=plan,
        noise_multiplier=1.3,
        max_grad_norm=1.0,
        cfg=cfg,
        device=torch.device("cpu"),
        grad_sample_mode="ghost",
        counter=counter,
    )
    assert result.history == [(1.3, plan.sample_rate, plan.steps)]
    assert counter.steps == result.steps == plan.steps
    check_history(
        result.history, noise_multiplier=1.3, sample_rate=plan.sample_rate, steps=plan.steps
    )


def test_a_sample_rate_whose_inverse_truncates_trains_and_passes_the_check() -> None:
    """N = 93, batch 1: q = 1/93, Opacus runs int(93 - 1e-14) = 92 steps at q and records
    q = 1/92 (it used to fail the run after training, charged). The check takes that record
    as the plan's q, and no other."""
    x, y = _data(93)
    plan = sampling_plan(n=93, batch_size=1, epochs=1)
    assert plan.steps == 92 and plan.sample_rate == 1 / 93
    result = train_private(
        build_model(ModelParams(name="logreg"), SPEC),
        x,
        y,
        plan=plan,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        cfg=TrainParams(batch_size=1, epochs=1),
        device=torch.device("cpu"),
        grad_sample_mode="hooks",
    )
    assert result.history == [(1.0, 1 / 92, 92)]
    check_history(result.history, noise_multiplier=1.0, sample_rate=1 / 93, steps=92)
    with pytest.raises(RuntimeError, match="Opacus ran"):
        check_history([(1.0, 1 / 91, 92)], noise_multiplier=1.0, sample_rate=1 / 93, steps=92)
    with pytest.raises(RuntimeError, match="Opacus ran"):  # a rate that does not truncate
        check_history([(1.0, 0.1, 10)], noise_multiplier=1.0, sample_rate=1 / 11, steps=10)


def test_history_check_refuses_a_mismatch() -> None:
    with pytest.raises(RuntimeError, match="Opacus ran"):
        check_history([(1.0, 0.1, 10)], noise_multiplier=1.0, sample_rate=0.1, steps=11)


def test_counter_holds_the_steps_taken_when_training_is_interrupted() -> None:
    x, y = _data(100)
    cfg = TrainParams(batch_size=10, epochs=5)
    plan = sampling_plan(n=100, batch_size=10, epochs=5)
    counter = StepCounter()

    def stop(steps: int, _loss: float) -> None:
        if steps == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_private(
            build_model(ModelParams(name="logreg"), SPEC),
            x,
            y,
            plan=plan,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            cfg=cfg,
            device=torch.device("cpu"),
            grad_sample_mode="hooks",
            counter=counter,
            on_step=stop,
        )
    assert counter.steps == 4
