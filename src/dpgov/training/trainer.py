"""DP-SGD with Opacus (and the plain-SGD reference), on CPU or CUDA.

The mechanism is a Poisson-subsampled Gaussian mechanism, add/remove-one neighbouring:
each optimizer step includes every training example independently with probability ``q``,
clips each example's gradient to L2 norm ``C`` (``max_grad_norm``), sums, adds
``N(0, σ²C²)`` and divides by the expected batch size ``qN``. ``T`` steps of it are charged.
Where patients hold several records, :mod:`dpgov.training.patient_level` runs the same
mechanism over patients (sampled and clipped per patient) on this module's pieces.

``q`` and the steps per epoch are exactly what Opacus runs: a loader of ``ceil(N/B)`` batches
becomes a Poisson loader with ``q = 1/ceil(N/B)`` and ``int(1/q)`` steps per epoch
(:func:`sampling_plan`). After training, Opacus's own accountant history must equal the
mechanism the ledger was charged for (:func:`check_history`); anything else is a bug.

The noise and the Poisson masks are secret (:func:`noise_generators`): two explicit
``torch.Generator`` objects, one passed to Opacus's optimizer (``noise_generator``) and one to
its Poisson sampler (through the loader's ``generator``), each seeded with 64 bits from the
operating system (:func:`secrets.randbits`) and never logged. ``train.seed`` seeds only the
model's initialisation, dropout and the non-private reference. ``train.secure_rng`` hands both
to Opacus's ``secure_mode`` (torchcsprng); ``train.reproducible_noise`` derives them from the
seed (tests and debugging: the noise is then public, and the gate refuses the model unless the
policy allows it). :data:`dpgov.gate.noise.NOISE_SOURCES` names the three; each run records its
own.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.contracts import show_spent
from dpgov.errors import UsageError
from dpgov.gate.noise import NOISE_CSPRNG, NOISE_OS_ENTROPY, NOISE_SEED, NOISE_SOURCES
from dpgov.training import bk_opacus, poisson_loader
from dpgov.training.precision import autocast, check_precision, grad_samples_to_fp32

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


@dataclass(frozen=True)
class SamplingPlan:
    """Poisson sampling as Opacus runs it: rate ``q``, ``steps_per_epoch`` steps per epoch."""

    n: int
    batch_size: int  # requested expected logical batch size
    sample_rate: float
    steps_per_epoch: int
    epochs: int

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.n


def sampling_plan(*, n: int, batch_size: int, epochs: int) -> SamplingPlan:
    """The sample rate and steps Opacus will run for ``n`` examples and batch ``batch_size``.

    Opacus derives ``q = 1/len(loader)`` from a loader of ``ceil(n/batch_size)`` batches and
    runs ``int(1/q)`` Poisson batches per epoch; the expected batch size is ``q·n``.
    """
    if n < 1:
        raise UsageError("training data: no examples to train on (n = 0)")
    if batch_size > n:
        raise UsageError(
            f"train.batch_size: {batch_size} is more than the {n} training examples; "
            f"use at most {n}"
        )
    if epochs < 1:
        raise UsageError(f"train.epochs: must be at least 1, found {epochs}")
    loader_len = math.ceil(n / batch_size)
    sample_rate = 1.0 / loader_len
    steps_per_epoch = int(1 / sample_rate)  # UniformWithReplacementSampler's default
    return SamplingPlan(
        n=n,
        batch_size=batch_size,
        sample_rate=sample_rate,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` where none exists is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"train.device: {name!r} requested but no CUDA device is available")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"train.device: {name!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"train.device: unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def supports_ghost(model: nn.Module) -> bool:
    """Ghost clipping needs a norm sampler for every layer that holds trainable weights."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and type(module) not in samplers:
            return False
    return True


def choose_grad_sample_mode(requested: str, model: nn.Module) -> str:
    """``auto`` → "ghost" where every weighted layer supports it, else "hooks"."""
    if requested == "auto":
        return "ghost" if supports_ghost(model) else "hooks"
    if requested == "ghost" and not supports_ghost(model):
        raise UsageError(
            "train.grad_sample_mode: 'ghost' needs ghost-clipping support in every weighted "
            "layer (Linear, Embedding); this model has others: use 'hooks' or 'auto'"
        )
    if requested not in ("ghost", "hooks"):
        raise UsageError(f"train.grad_sample_mode: unknown {requested!r}; use auto, ghost, hooks")
    return requested


def noise_source(cfg: Any) -> str:
    """The noise source ``cfg`` (:class:`~dpgov.training.params.TrainParams`) asks for."""
    if cfg.secure_rng:
        return NOISE_CSPRNG
    if getattr(cfg, "reproducible_noise", False):
        return NOISE_SEED
    return NOISE_OS_ENTROPY


def noise_generators(
    source: str, seed: int, device: torch.device
) -> tuple[torch.Generator | None, torch.Generator | None]:
    """(sampler generator on the CPU, noise generator on ``device``) for ``source``.

    ``os_entropy``: each seeded with 64 fresh bits from :func:`secrets.randbits`, kept nowhere.
    ``seed``: ``seed`` and ``seed + 1`` (reproducible). ``csprng``: (None, None): Opacus's
    secure mode installs its own generator for both.
    """
    import torch

    if source == NOISE_CSPRNG:
        return None, None
    if source == NOISE_SEED:
        sampler_seed, noise_seed = seed, seed + 1
    elif source == NOISE_OS_ENTROPY:
        sampler_seed, noise_seed = secrets.randbits(64), secrets.randbits(64)
    else:
        raise ValueError(f"unknown noise source {source!r}; known: {', '.join(NOISE_SOURCES)}")
    sampler = torch.Generator().manual_seed(sampler_seed)
    noise = torch.Generator(device=device).manual_seed(noise_seed)
    return sampler, noise


def check_secure_rng(wanted: bool) -> None:
    """Refuse clearly when a cryptographically secure generator is asked for but missing."""
    if not wanted:
        return
    try:
        import torchcsprng  # noqa: F401
    except ImportError as err:
        raise UsageError(
            "train.secure_rng: true needs torchcsprng, which is not installed (its last "
            "release has no build for Python 3.11); refusing rather than falling back"
        ) from err


@dataclass
class StepCounter:
    """Optimizer steps taken so far (shared with the caller, which needs it after a crash)."""

    steps: int = 0
    examples_seen: int = 0


@dataclass
class TrainResult:
    model: Any  # the trained torch module, unwrapped from Opacus, on the CPU
    steps: int
    history: list[tuple[float, float, int]]  # Opacus accountant history (σ, q, steps)
    epoch_losses: list[float]
    seconds: float
    epoch_seconds: list[float]
    device: str
    grad_sample_mode: str | None
    peak_memory_bytes: int | None = None
    private: bool = True
    noise_source: str | None = None  # NOISE_SOURCES for a DP run; None for the reference
    extra: dict[str, Any] = field(default_factory=dict)


StepCallback = Callable[[int, float], None]  # (steps so far, loss of the last batch)
EpsilonFn = Callable[[int], float]  # steps so far → ε of this run so far


def _tensors(x: np.ndarray, y: np.ndarray) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    from_disk = getattr(x, "torch_dataset", None)  # image files (dpgov.data.image_store)
    if from_disk is not None:
        return from_disk(y)
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    return TensorDataset(xt, yt)


def _optimizer(params: Any, cfg: Any) -> torch.optim.Optimizer:
    import torch

    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate)
    return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum)


class _Progress:
    """A rich progress bar on stderr showing loss and ε spent so far (or nothing)."""

    def __init__(self, enabled: bool, total: int, label: str, with_epsilon: bool) -> None:
        self._bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns: list[Any] = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
        ]
        if with_epsilon:
            columns.append(TextColumn("ε spent {task.fields[eps]}"))
        columns.append(TimeElapsedColumn())
        self._bar = Progress(*columns, console=Console(stderr=True), transient=False)
        self._bar.start()
        self._task = self._bar.add_task(label, total=total, loss="-", eps="0.000")

    def update(self, *, steps: int, loss: float | None = None, eps: float | None = None) -> None:
        if self._bar is None:
            return
        fields: dict[str, Any] = {"completed": steps}
        if loss is not None and math.isfinite(loss):
            fields["loss"] = f"{loss:.4f}"
        if eps is not None:
            fields["eps"] = show_spent(eps)
        self._bar.update(self._task, **fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def train_private(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    plan: SamplingPlan,
    noise_multiplier: float,
    max_grad_norm: float,
    cfg: Any,
    device: torch.device,
    grad_sample_mode: str,
    counter: StepCounter | None = None,
    on_step: StepCallback | None = None,
    epsilon_fn: EpsilonFn | None = None,
    progress: bool = False,
) -> TrainResult:
    """DP-SGD for ``plan.epochs`` epochs of Poisson batches; returns the unwrapped model.

    ``cfg`` is a :class:`~dpgov.training.params.TrainParams` (optimizer, learning rate, seed,
    physical batch size, secure RNG). ``counter.steps`` always holds the optimizer steps taken
    so far, also when this function raises.
    """
    import torch
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch.utils.data import DataLoader

    if len(x) != plan.n:
        raise ValueError(f"plan was made for {plan.n} examples, got {len(x)}")
    check_secure_rng(cfg.secure_rng)
    source = noise_source(cfg)
    precision = getattr(cfg, "precision", "fp32")  # dpgov.training.precision
    check_precision(precision, grad_sample_mode, grad_sample_mode)
    counter = counter if counter is not None else StepCounter()
    seed_everything(cfg.seed)  # initialisation and dropout only: never the noise or the masks
    model = model.to(device)
    model.train()
    sampler_gen, noise_gen = noise_generators(source, cfg.seed, device)
    # in memory: one Bernoulli(q) mask per step over tensors (dpgov.training.poisson_loader),
    # Opacus's draw from the same generator; else Opacus's Poisson sampler takes the loader's
    # generator (DPDataLoader.from_data_loader)
    fast = poisson_loader.usable(x, source, plan.sample_rate, plan.steps_per_epoch)
    if fast:
        loader = poisson_loader.poisson_loader(
            x, y, sample_rate=plan.sample_rate, steps=plan.steps_per_epoch, generator=sampler_gen
        )
    else:
        loader = DataLoader(_tensors(x, y), batch_size=plan.batch_size, generator=sampler_gen)
    optimizer = _optimizer(model.parameters(), cfg)
    criterion = torch.nn.BCEWithLogitsLoss(reduction="mean")
    # The engine's accountant only records history here; dpgov's ledger does the accounting
    # (RDP keeps one merged (σ, q, steps) segment and never fails numerically).
    with warnings.catch_warnings():  # the secure-RNG notice: the run records noise_source
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        # Opacus's PrivacyEngine; for "bk" its subclass (dpgov.training.bk_opacus)
        engine = bk_opacus.privacy_engine(
            grad_sample_mode, accountant="rdp", secure_mode=source == NOISE_CSPRNG
        )
    wrapped = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=not fast,  # fast: already Poisson; Opacus keeps it as it is
        grad_sample_mode=grad_sample_mode,
        noise_generator=noise_gen,
    )
    if grad_sample_mode == "ghost":
        dp_model, dp_optimizer, dp_criterion, dp_loader = wrapped
    else:
        dp_model, dp_optimizer, dp_loader = wrapped
        dp_criterion = criterion
    if fast:  # what poisson_sampling=True does besides wrapping the loader
        dp_model.forbid_grad_accumulation()
        if dp_loader is not loader:
            raise RuntimeError("Opacus replaced dpgov's Poisson loader")
    # both secret generators must be the ones Opacus draws from (else: the global, seeded one)
    if sampler_gen is not None and dp_loader.batch_sampler.generator is not sampler_gen:
        raise RuntimeError("Opacus's Poisson sampler does not use dpgov's sampling generator")
    if noise_gen is not None and getattr(dp_optimizer, "generator", None) is not noise_gen:
        raise RuntimeError("Opacus's optimizer does not use dpgov's noise generator")
    if dp_loader.sample_rate != plan.sample_rate or len(dp_loader) != plan.steps_per_epoch:
        raise RuntimeError(  # a bug or an Opacus change: the charge would not match the run
            f"Opacus samples at q={dp_loader.sample_rate} for {len(dp_loader)} steps per epoch, "
            f"planned q={plan.sample_rate} for {plan.steps_per_epoch}"
        )

    bar = _Progress(progress, plan.steps, "DP-SGD", with_epsilon=epsilon_fn is not None)
    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    quiet = warnings.catch_warnings()
    quiet.__enter__()
    # ghost clipping's second backward pass fires full backward hooks on inputs without grad
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    try:
        for _epoch in range(plan.epochs):
            t0 = time.perf_counter()
            total, batches = 0.0, 0
            with BatchMemoryManager(
                data_loader=dp_loader,
                max_physical_batch_size=cfg.max_physical_batch_size,
                optimizer=dp_optimizer,
            ) as physical:
                for xb, yb in physical:
                    xb, yb = xb.to(device), yb.to(device)
                    dp_optimizer.zero_grad()
                    with autocast(precision, device):  # amp: forward in bfloat16
                        out = dp_model(xb)
                    loss = dp_criterion(out.float(), yb)
                    loss.backward()
                    grad_samples_to_fp32(dp_optimizer.params)  # norms, clip, noise in fp32
                    dp_optimizer.step()
                    counter.steps = _accounted_steps(engine)
                    counter.examples_seen += len(xb)
                    value = float(loss.item()) if len(xb) else float("nan")
                    if math.isfinite(value):
                        total += value
                        batches += 1
                    if on_step is not None:
                        on_step(counter.steps, value)
                    bar.update(steps=counter.steps, loss=value)
            epoch_seconds.append(time.perf_counter() - t0)
            epoch_losses.append(total / max(batches, 1))
            if epsilon_fn is not None:
                bar.update(steps=counter.steps, eps=epsilon_fn(counter.steps))
    finally:
        quiet.__exit__(None, None, None)
        bar.close()
    seconds = time.perf_counter() - started
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    history = [(float(s), float(q), int(t)) for s, q, t in engine.accountant.history]
    _cleanup(dp_model)
    return TrainResult(
        model=model.to("cpu").eval(),
        steps=counter.steps,
        history=history,
        epoch_losses=epoch_losses,
        seconds=seconds,
        epoch_seconds=epoch_seconds,
        device=str(device),
        grad_sample_mode=grad_sample_mode,
        peak_memory_bytes=peak,
        noise_source=source,
    )


def _accounted_steps(engine: Any) -> int:
    """Steps Opacus's accountant has recorded (its hook runs before the parameter update)."""
    return sum(int(steps) for _s, _q, steps in engine.accountant.history)


def _cleanup(dp_model: Any) -> None:
    """Remove Opacus hooks so the plain module can be saved and reused."""
    for name in ("_close", "remove_hooks", "cleanup"):
        fn = getattr(dp_model, name, None)
        if callable(fn):
            with contextlib.suppress(Exception):  # already removed: nothing left to clean
                fn()
            return


def check_history(
    history: list[tuple[float, float, int]],
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
) -> None:
    """Opacus's accountant history must be the one mechanism charged: (σ, q, steps).

    Opacus's sampler draws at q = 1/len(loader) and runs ``int(1/q)`` steps an epoch, but its
    accountant records 1/len(DP loader) = 1/int(1/q): where ``int(1/q)`` truncates (1/(1/93)
    is 92.99…, about 6 % of loader lengths below 200,000) it records a larger q than it
    sampled at. That record, and only it, stands for the planned q (the ledger charges the
    rate the sampler used); any other rate or step count is a mismatch."""
    if steps == 0 and not history:
        return
    recorded = 1.0 / int(1.0 / float(sample_rate))  # Opacus's record of a sampler at q
    merged: dict[tuple[float, float], int] = {}
    for s, q, t in history:
        q = float(sample_rate) if q == recorded else q
        merged[(s, q)] = merged.get((s, q), 0) + t
    expected = {(float(noise_multiplier), float(sample_rate)): int(steps)}
    if merged != expected:
        raise RuntimeError(
            f"Opacus ran {history} but the ledger holds (σ={noise_multiplier}, "
            f"q={sample_rate}, steps={steps})"
        )


def train_nonprivate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    epochs: int,
    cfg: Any,
    device: torch.device,
    progress: bool = False,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """The non-private reference: same model, data, epochs and optimizer, shuffled batches."""
    import torch
    from torch.utils.data import DataLoader

    seed_everything(cfg.seed)
    model = model.to(device)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    if poisson_loader.in_memory(x):  # fetched as the DP path's batches are (a fair ratio)
        loader = poisson_loader.shuffled_loader(x, y, batch_size=batch_size, generator=gen)
    else:
        loader = DataLoader(_tensors(x, y), batch_size=batch_size, shuffle=True, generator=gen)
    optimizer = _optimizer(model.parameters(), cfg)
    criterion = torch.nn.BCEWithLogitsLoss(reduction="mean")
    bar = _Progress(progress, epochs * len(loader), "non-private", with_epsilon=False)
    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    steps = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        for _epoch in range(epochs):
            t0 = time.perf_counter()
            total = 0.0
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad()
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
                steps += 1
                total += float(loss.item())
                if on_step is not None:
                    on_step(steps, float(loss.item()))
                bar.update(steps=steps, loss=float(loss.item()))
            epoch_seconds.append(time.perf_counter() - t0)
            epoch_losses.append(total / max(len(loader), 1))
    finally:
        bar.close()
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return TrainResult(
        model=model.to("cpu").eval(),
        steps=steps,
        history=[],
        epoch_losses=epoch_losses,
        seconds=time.perf_counter() - started,
        epoch_seconds=epoch_seconds,
        device=str(device),
        grad_sample_mode=None,
        peak_memory_bytes=peak,
        private=False,
    )


def predict_scores(model: nn.Module, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Probabilities ``sigmoid(logit)`` for every row of ``x`` (model in eval mode, on CPU)."""
    import torch

    model = model.to("cpu").eval()
    if hasattr(x, "torch_dataset"):  # image files decoded per batch: keep each batch small
        batch_size = min(batch_size, 256)
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.ascontiguousarray(x[start : start + batch_size]))
            out.append(torch.sigmoid(model(xb.float())).reshape(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
