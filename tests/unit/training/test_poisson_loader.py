"""The vectorised Poisson loader (issue 21 item 1): Opacus's own masks drawn in one selection,
fetched by indexing tensors; batch sizes Binomial(N, q); the trainer's secret generator; the
same mechanism charged, the same model trained as through Opacus's DPDataLoader."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from scipy import stats

from dpgov.gate.noise import NOISE_CSPRNG, NOISE_OS_ENTROPY, NOISE_SEED
from dpgov.training import poisson_loader as pl
from dpgov.training import trainer
from dpgov.training.models import InputSpec, build_model
from dpgov.training.params import ModelParams, TrainParams

CPU = torch.device("cpu")
SPEC = InputSpec(kind="tabular", n_features=4)


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    return x, y


def _batches(n: int, q: float, steps: int, gen: torch.Generator | None) -> list[np.ndarray]:
    return list(pl.PoissonBatches(num_samples=n, sample_rate=q, steps=steps, generator=gen))


def test_batch_sizes_follow_binomial_n_q() -> None:
    n, q, draws = 200, 0.05, 3000
    sizes = np.array([len(b) for b in _batches(n, q, draws, torch.Generator().manual_seed(3))])
    # chi-square on bins of expected count >= 5 (tails pooled) against the Binomial(n, q) pmf
    edges = [0, *range(4, 18), n + 1]
    observed = np.histogram(sizes, bins=edges)[0]
    cdf = stats.binom.cdf(np.array(edges) - 1, n, q)
    expected = np.diff(cdf) * draws
    assert expected.min() >= 5
    _chi2, p = stats.chisquare(observed, expected * observed.sum() / expected.sum())
    assert p > 1e-3, (observed, expected.round(1))
    # and the first two moments against the closed forms
    assert abs(sizes.mean() - n * q) < 4 * np.sqrt(n * q * (1 - q) / draws)
    assert abs(sizes.var() / (n * q * (1 - q)) - 1) < 0.1


def test_a_wrong_size_distribution_is_caught() -> None:
    # the same test rejects batches of fixed size qN: it can fail
    sizes = np.full(3000, 10)
    edges = [0, *range(4, 18), 201]
    observed = np.histogram(sizes, bins=edges)[0]
    expected = np.diff(stats.binom.cdf(np.array(edges) - 1, 200, 0.05)) * 3000
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum())[1] < 1e-6


def test_every_row_can_appear_each_about_q_of_the_steps() -> None:
    n, q, steps = 50, 0.1, 400
    batches = _batches(n, q, steps, torch.Generator().manual_seed(5))
    counts = np.bincount(np.concatenate(batches), minlength=n)
    assert (counts > 0).all()
    assert all(np.all(np.diff(b) > 0) for b in batches)  # each row at most once per step
    # each row's inclusions are Binomial(steps, q): all within a Bonferroni-wide band
    low, high = stats.binom.ppf([1e-4, 1 - 1e-4], steps, q)
    assert counts.min() >= low and counts.max() <= high


def test_masks_equal_opacus_uniform_sampler_draw_for_draw() -> None:
    ours = _batches(300, 0.03, 25, torch.Generator().manual_seed(11))
    opacus = list(
        UniformWithReplacementSampler(
            num_samples=300, sample_rate=0.03, generator=torch.Generator().manual_seed(11), steps=25
        )
    )
    assert [b.tolist() for b in ours] == opacus


def test_same_seed_same_masks_os_entropy_different() -> None:
    a = _batches(500, 0.1, 5, trainer.noise_generators(NOISE_SEED, 7, CPU)[0])
    b = _batches(500, 0.1, 5, trainer.noise_generators(NOISE_SEED, 7, CPU)[0])
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    c = _batches(500, 0.1, 5, trainer.noise_generators(NOISE_OS_ENTROPY, 7, CPU)[0])
    d = _batches(500, 0.1, 5, trainer.noise_generators(NOISE_OS_ENTROPY, 7, CPU)[0])
    assert [x.tolist() for x in c] != [x.tolist() for x in d]


def test_the_loader_draws_from_the_generator_it_is_given() -> None:
    x, y = _data(64)
    gen = torch.Generator().manual_seed(1)
    loader = pl.poisson_loader(x, y, sample_rate=1 / 8, steps=8, generator=gen)
    assert loader.batch_sampler.generator is gen and loader.generator is gen
    assert loader.sample_rate == 1 / 8 and len(loader) == 8
    before = gen.get_state()
    ours = [xb for xb, _yb in loader]
    assert not torch.equal(gen.get_state(), before)  # the masks consumed this generator
    # Opacus's DPDataLoader from a generator in the same state yields the same batches
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    same = torch.Generator()
    same.set_state(before)
    base = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), 8, generator=same)
    theirs = [xb for xb, _yb in DPDataLoader.from_data_loader(base)]
    assert [len(b) for b in ours] == [len(b) for b in theirs]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_an_empty_draw_is_a_zero_length_batch_of_the_right_shape() -> None:
    x, y = _data(10)
    xb, yb = pl.TensorRows(x, y).__getitems__([])
    assert xb.shape == (0, 4) and yb.shape == (0,)
    assert xb.dtype == torch.float32 and yb.dtype == torch.float32


def test_shuffled_batches_cover_every_row_once_per_pass() -> None:
    x, y = _data(50)
    loader = pl.shuffled_loader(x, y, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 4
    rows = torch.cat([xb for xb, _ in loader])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, x.tolist()))


def test_when_the_fast_loader_applies() -> None:
    x, _ = _data(10)
    assert pl.usable(x, NOISE_OS_ENTROPY, 1 / 8, 8)
    assert not pl.usable(x, NOISE_CSPRNG, 1 / 8, 8)  # secure mode: Opacus's own loader
    # q = 1/93 gives int(1/q) = 92 steps, and Opacus would charge 1/len(loader) = 1/92
    plan = trainer.sampling_plan(n=93, batch_size=1, epochs=1)
    assert plan.steps_per_epoch == 92 and not pl.usable(x, NOISE_SEED, plan.sample_rate, 92)
    with pytest.raises(ValueError, match="1/q"):
        pl.poisson_loader(x, x[:, 0], sample_rate=1 / 93, steps=92, generator=None)

    class OnDisk:
        torch_dataset = object()

    assert not pl.usable(OnDisk(), NOISE_SEED, 1 / 8, 8)


def _dp_run(batch: int, n: int, mode: str = "hooks") -> tuple[Any, trainer.SamplingPlan]:
    x, y = _data(n)
    cfg = TrainParams(
        seed=7, batch_size=batch, learning_rate=0.5, reproducible_noise=True, epochs=2
    )
    trainer.seed_everything(cfg.seed)
    model = build_model(ModelParams(name="mlp", hidden=[8]), SPEC)
    plan = trainer.sampling_plan(n=n, batch_size=batch, epochs=2)
    res = trainer.train_private(
        model,
        x,
        y,
        plan=plan,
        noise_multiplier=1.5,
        max_grad_norm=0.5,
        cfg=cfg,
        device=CPU,
        grad_sample_mode=mode,
    )
    return res, plan


def _weights(model: Any) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_dp_run_charges_the_mechanism_and_matches_opacus_loader(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, plan = _dp_run(16, 96, mode)
    assert fast.history == [(1.5, plan.sample_rate, plan.steps)]
    trainer.check_history(
        fast.history, noise_multiplier=1.5, sample_rate=plan.sample_rate, steps=plan.steps
    )
    # the same masks and noise through Opacus's DPDataLoader train the same model
    monkeypatch.setattr(pl, "usable", lambda *_a: False)
    slow, _ = _dp_run(16, 96, mode)
    assert slow.history == fast.history
    torch.testing.assert_close(_weights(fast.model), _weights(slow.model))


def test_empty_batches_are_steps_taken_and_charged() -> None:
    # q = 1/20 over 20 rows: P(empty) = 0.95^20 ≈ 0.36 per step, 40 steps
    res, plan = _dp_run(1, 20)
    assert res.steps == plan.steps == 40
    assert res.history == [(1.5, 1 / 20, 40)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), batch=st.integers(1, 400))
def test_where_the_loader_is_used_opacus_derives_the_plans_q(n: int, batch: int) -> None:
    # make_private takes q = 1/len(loader) and the expected batch int(N·q) from the loader
    batch = min(batch, n)
    plan = trainer.sampling_plan(n=n, batch_size=batch, epochs=1)
    if not pl.usable(np.zeros((n, 1)), NOISE_SEED, plan.sample_rate, plan.steps_per_epoch):
        assert 1.0 / plan.steps_per_epoch != plan.sample_rate  # only the truncated plans
        return
    x, y = np.zeros((n, 2), dtype=np.float32), np.zeros(n, dtype=np.float32)
    loader = pl.poisson_loader(
        x, y, sample_rate=plan.sample_rate, steps=plan.steps_per_epoch, generator=None
    )
    assert len(loader) == plan.steps_per_epoch
    assert 1 / len(loader) == plan.sample_rate == loader.sample_rate
    assert len(loader.dataset) == n
