"""Secret noise by default (issue 16): the DP noise and the Poisson masks come from OS entropy
through explicit generators, never from ``train.seed``; the seed keeps initialisation and the
non-private reference reproducible; ``reproducible_noise`` makes DP runs repeat exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from dpgov.errors import UsageError
from dpgov.training.models import InputSpec, build_model
from dpgov.training.params import ModelParams, TrainParams, parse_params
from dpgov.training.trainer import (
    noise_generators,
    noise_source,
    sampling_plan,
    seed_everything,
    train_nonprivate,
    train_private,
)

SPEC = InputSpec(kind="tabular", n_features=4)
CPU = torch.device("cpu")


def _data(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    return x, y


def _weights(model: Any) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _dp(cfg: TrainParams, *, sigma: float, batch: int) -> torch.Tensor:
    """One DP run from the same seeded initialisation (as steps.train does)."""
    x, y = _data()
    seed_everything(cfg.seed)
    model = build_model(ModelParams(name="mlp", hidden=[8]), SPEC)
    result = train_private(
        model,
        x,
        y,
        plan=sampling_plan(n=len(y), batch_size=batch, epochs=2),
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        cfg=cfg,
        device=CPU,
        grad_sample_mode="ghost",
    )
    assert result.noise_source == noise_source(cfg)
    return _weights(result.model)


def test_two_dp_runs_with_one_seed_give_different_models() -> None:
    cfg = TrainParams(seed=7, batch_size=16, learning_rate=0.5)
    a, b = _dp(cfg, sigma=2.0, batch=16), _dp(cfg, sigma=2.0, batch=16)
    assert noise_source(cfg) == "os_entropy"
    assert not torch.equal(a, b)


def test_the_noise_alone_is_secret_with_no_sampling_randomness() -> None:
    # q = 1: every Poisson batch holds every example, so only the noise can differ
    cfg = TrainParams(seed=7, batch_size=96, learning_rate=0.5)
    assert not torch.equal(_dp(cfg, sigma=2.0, batch=96), _dp(cfg, sigma=2.0, batch=96))


def test_the_poisson_masks_alone_are_secret_with_no_noise() -> None:
    # σ = 0: only the sampling can differ
    cfg = TrainParams(seed=7, batch_size=16, learning_rate=0.5)
    assert not torch.equal(_dp(cfg, sigma=0.0, batch=16), _dp(cfg, sigma=0.0, batch=16))


def test_reproducible_noise_gives_identical_dp_models() -> None:
    cfg = TrainParams(seed=7, batch_size=16, learning_rate=0.5, reproducible_noise=True)
    assert noise_source(cfg) == "seed"
    assert torch.equal(_dp(cfg, sigma=2.0, batch=16), _dp(cfg, sigma=2.0, batch=16))


def test_the_reference_trained_twice_with_one_seed_is_identical() -> None:
    x, y = _data()
    cfg = TrainParams(seed=7, batch_size=16, learning_rate=0.5)

    def reference() -> torch.Tensor:
        seed_everything(cfg.seed)
        model = build_model(ModelParams(name="mlp", hidden=[8]), SPEC)
        res = train_nonprivate(model, x, y, batch_size=16, epochs=2, cfg=cfg, device=CPU)
        assert res.noise_source is None and not res.private
        return _weights(res.model)

    assert torch.equal(reference(), reference())


def test_secret_generators_do_not_depend_on_the_seed_or_the_global_generator() -> None:
    torch.manual_seed(0)
    a = noise_generators("os_entropy", 0, CPU)
    torch.manual_seed(0)
    b = noise_generators("os_entropy", 0, CPU)
    seeds = {g.initial_seed() for g in (*a, *b) if g is not None}
    assert len(seeds) == 4  # four independent 64-bit draws
    sampler, noise = noise_generators("seed", 5, CPU)
    assert sampler is not None and noise is not None
    assert (sampler.initial_seed(), noise.initial_seed()) == (5, 6)
    assert noise_generators("csprng", 5, CPU) == (None, None)  # Opacus's secure mode draws
    with pytest.raises(ValueError, match="unknown noise source"):
        noise_generators("clock", 5, CPU)


def test_secure_rng_and_reproducible_noise_together_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="secure_rng and reproducible_noise"):
        parse_params({"train": {"secure_rng": True, "reproducible_noise": True}})
    assert noise_source(TrainParams(secure_rng=True)) == "csprng"


def test_secure_rng_without_torchcsprng_is_refused_before_training() -> None:
    pytest.importorskip("opacus")
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - not on these machines
        pytest.skip("torchcsprng is installed here")
    with pytest.raises(UsageError, match="torchcsprng"):
        _dp(TrainParams(secure_rng=True, batch_size=16), sigma=1.0, batch=16)
