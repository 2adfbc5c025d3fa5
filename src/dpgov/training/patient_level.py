"""Patient-level DP-SGD: sample patients, clip each patient's summed gradient, noise once.

When a patient holds several training records (images), record-level DP-SGD protects the
patient only through group privacy (:mod:`dpgov.accounting.group_privacy`). Here the privacy unit is
the patient throughout:

1. each step samples every *patient* independently with probability ``q`` (Poisson; Opacus's
   own :class:`~opacus.utils.uniform_sampler.UniformWithReplacementSampler` over patient
   indices, with dpgov's secret sampling generator), ``q = 1/ceil(P/B)`` for ``P`` patients
   and ``B`` expected patients per step (:func:`dpgov.training.trainer.sampling_plan` over
   patients);
2. of a sampled patient at most ``max_images_per_patient_step`` images enter the step (a
   uniform subset, drawn with the same secret generator, when the patient has more);
3. per-example gradients come from Opacus's ``GradSampleModule`` (hooks); they are
   scatter-added by patient (``index_add_``), and each patient's summed gradient is clipped
   to L2 norm ``C`` (:class:`PatientDPOptimizer`, overriding only
   :meth:`~opacus.optimizers.DPOptimizer.clip_and_accumulate`);
4. Opacus's ``add_noise`` adds ``N(0, σ²C²)`` once per step (dpgov's noise generator) and
   ``scale_grad`` divides by the expected number of patients ``qP``.

Adding or removing one patient changes the step's clipped sum by at most ``C``, so the step is
the Poisson-subsampled Gaussian mechanism at the patient level: ``T`` steps charge exactly
:class:`~dpgov.accounting.DpSgdMechanism` ``(σ, q, T)`` with no group-privacy factor. Physical
batches (memory) are packed from whole patients and never split one; the step's sum is
accumulated over them as Opacus's ``BatchMemoryManager`` does (``signal_skip_step``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.errors import UsageError
from dpgov.gate.noise import NOISE_CSPRNG
from dpgov.training.precision import autocast
from dpgov.training.trainer import (
    EpsilonFn,
    SamplingPlan,
    StepCallback,
    StepCounter,
    TrainResult,
    _optimizer,
    _Progress,
    _tensors,
    check_secure_rng,
    noise_generators,
    noise_source,
    seed_everything,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def patient_groups(patient_id: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the distinct patients, the row indices of each), in order of first appearance."""
    ids = np.asarray(patient_id)
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rows_sorted = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(uniq))
    splits = np.split(rows_sorted, np.cumsum(counts)[:-1])
    return uniq[order], [splits[i] for i in order]


def records_per_patient(patient_id: np.ndarray) -> int:
    """The most training records any one patient holds (0 for no records)."""
    if len(patient_id) == 0:
        return 0
    _ids, counts = np.unique(np.asarray(patient_id), return_counts=True)
    return int(counts.max())


def pack_physical(sizes: Sequence[int], max_physical: int) -> list[list[int]]:
    """Consecutive groups of patients (positions into ``sizes``, each a patient's image count)
    whose images fit ``max_physical``; a patient is never split. A patient with more images
    than ``max_physical`` is a usage error (cap ``train.max_images_per_patient_step``)."""
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if size > max_physical:
            raise UsageError(
                f"train.max_physical_batch_size: {max_physical} is below one patient's "
                f"{size} images in a step; lower train.max_images_per_patient_step"
            )
        if current and used + size > max_physical:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        batches.append(current)
    return batches


def _patient_optimizer_class() -> type:
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class PatientDPOptimizer(DPOptimizer):  # type: ignore[misc]
        """Opacus's DPOptimizer with per-*patient* clipping: before a physical batch's
        ``step``, set :attr:`patient_index` (each example's patient, ``0..patients-1`` within
        the batch) and :attr:`patients`; per-example gradients are summed per patient, and
        each patient's sum is clipped to ``max_grad_norm``. Norms and clip factors are
        computed in fp32 whatever the gradients' dtype."""

        patient_index: Any = None
        patients: int = 0

        def clip_and_accumulate(self) -> None:
            import torch

            index, groups = self.patient_index, int(self.patients)
            if index is None:
                raise RuntimeError("PatientDPOptimizer: patient_index is not set for this batch")
            samples = self.grad_samples
            sums = []
            for g in samples:
                if len(g) != len(index):
                    raise RuntimeError(
                        f"PatientDPOptimizer: {len(g)} per-example gradients, "
                        f"{len(index)} patient indices"
                    )
                out = torch.zeros((groups, *g.shape[1:]), dtype=torch.float32, device=g.device)
                out.index_add_(0, index.to(g.device), g.to(torch.float32))
                sums.append(out)
            if groups == 0:
                factor = torch.zeros((0,), dtype=torch.float32)
            else:
                device = sums[0].device
                norms = torch.stack(
                    [s.reshape(groups, -1).norm(2, dim=-1).to(device) for s in sums], dim=1
                ).norm(2, dim=1)
                factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            self.last_patient_norms = None if groups == 0 else norms.detach().cpu()
            for p, s in zip(self.params, sums, strict=True):
                _check_processed_flag(p.grad_sample)
                grad = torch.einsum("i,i...", factor.to(s.device), s).to(p.dtype)
                if p.summed_grad is not None:
                    p.summed_grad += grad
                else:
                    p.summed_grad = grad
                _mark_as_processed(p.grad_sample)

    return PatientDPOptimizer


def patient_dp_optimizer(
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_patients: float,
    generator: Any = None,
    secure_mode: bool = False,
    loss_reduction: str = "mean",
) -> Any:
    """A :class:`PatientDPOptimizer` around ``optimizer``; ``loss_reduction="mean"`` divides
    the noised sum by ``expected_patients`` (``qP``)."""
    cls = _patient_optimizer_class()
    return cls(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_patients,
        loss_reduction=loss_reduction,
        generator=generator,
        secure_mode=secure_mode,
    )


def _secure_generator() -> Any:
    """torchcsprng's /dev/urandom generator (what Opacus's ``secure_mode`` installs)."""
    import torchcsprng

    return torchcsprng.create_random_device_generator("/dev/urandom")


def _rows(dataset: Any, idx: np.ndarray) -> tuple[Any, Any]:
    """(images, labels) of rows ``idx``: sliced at once in memory, else read one by one."""
    import torch
    from torch.utils.data import TensorDataset, default_collate

    if isinstance(dataset, TensorDataset):
        index = torch.as_tensor(idx, dtype=torch.long)
        return dataset.tensors[0][index], dataset.tensors[1][index]
    xb, yb = default_collate([dataset[int(i)] for i in idx])
    return xb, yb


def _empty_grad_samples(params: list[Any]) -> None:
    """A step that sampled no patient: zero per-example gradients, so only noise is added."""
    import torch

    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def train_patient_level(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    patient_id: np.ndarray,
    *,
    plan: SamplingPlan,
    noise_multiplier: float,
    max_grad_norm: float,
    max_images_per_patient_step: int,
    cfg: Any,
    device: torch.device,
    counter: StepCounter | None = None,
    on_step: StepCallback | None = None,
    epsilon_fn: EpsilonFn | None = None,
    progress: bool = False,
) -> TrainResult:
    """Patient-level DP-SGD for ``plan.epochs`` epochs (``plan.n`` is the number of
    patients); returns the unwrapped model. ``counter.steps`` holds the optimizer steps
    taken so far, also when this raises. ``cfg`` is a
    :class:`~dpgov.training.params.TrainParams`."""
    import torch
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    patients, rows = patient_groups(patient_id)
    if len(patients) != plan.n:
        raise ValueError(f"plan was made for {plan.n} patients, got {len(patients)}")
    if len(x) != len(y) or len(x) != len(patient_id):
        raise ValueError("x, y and patient_id differ in length")
    if max_images_per_patient_step < 1:
        raise UsageError(
            "train.max_images_per_patient_step: must be at least 1, "
            f"found {max_images_per_patient_step}"
        )
    if max_images_per_patient_step > cfg.max_physical_batch_size:
        raise UsageError(
            f"train.max_images_per_patient_step: {max_images_per_patient_step} is more than "
            f"train.max_physical_batch_size {cfg.max_physical_batch_size}: a patient's images "
            "must fit one physical batch"
        )
    check_secure_rng(cfg.secure_rng)
    source = noise_source(cfg)
    counter = counter if counter is not None else StepCounter()
    seed_everything(cfg.seed)  # initialisation and dropout only: never the noise or the masks
    model = model.to(device)
    model.train()
    sampler_gen, noise_gen = noise_generators(source, cfg.seed, device)
    if source == NOISE_CSPRNG:  # as Opacus's secure mode: one /dev/urandom generator for both
        sampler_gen = noise_gen = _secure_generator()
    if sampler_gen is None or noise_gen is None:  # never the global generator train.seed seeds
        raise RuntimeError(f"noise source {source!r} gave no generator for masks or noise")
    dataset = _tensors(x, y)  # in memory, or image files read per batch from disk
    sampler = UniformWithReplacementSampler(
        num_samples=plan.n, sample_rate=plan.sample_rate, generator=sampler_gen
    )
    if len(sampler) != plan.steps_per_epoch:
        raise RuntimeError(
            f"the patient sampler runs {len(sampler)} steps per epoch, "
            f"planned {plan.steps_per_epoch}"
        )
    dp_model = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    optimizer = patient_dp_optimizer(
        _optimizer(dp_model.parameters(), cfg),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_patients=plan.expected_batch_size,
        generator=noise_gen,
        secure_mode=source == NOISE_CSPRNG,
    )
    accountant = RDPAccountant()  # records (σ, q, steps) only; the ledger does the accounting
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    criterion = torch.nn.BCEWithLogitsLoss(reduction="sum")
    cap = int(max_images_per_patient_step)
    trainable = [p for p in dp_model.parameters() if p.requires_grad]

    def step_rows(sampled: list[int]) -> list[np.ndarray]:
        out = []
        for i in sampled:
            r = rows[i]
            if len(r) > cap:  # a uniform subset, from the secret sampling generator
                pick = torch.randperm(len(r), generator=sampler_gen)[:cap].numpy()
                r = r[np.sort(pick)]
            out.append(r)
        return out

    bar = _Progress(progress, plan.steps, "patient DP-SGD", with_epsilon=epsilon_fn is not None)
    epoch_losses: list[float] = []
    epoch_seconds: list[float] = []
    max_seen = 0
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for _epoch in range(plan.epochs):
            t0 = time.perf_counter()
            total, images = 0.0, 0
            for sampled in sampler:
                chosen = step_rows([int(i) for i in sampled])
                max_seen = max([max_seen, *(len(r) for r in chosen)])
                batches = pack_physical([len(r) for r in chosen], cfg.max_physical_batch_size)
                loss_sum, n_images = _one_step(
                    dp_model,
                    optimizer,
                    criterion,
                    dataset,
                    chosen,
                    batches,
                    trainable,
                    device,
                    precision=getattr(cfg, "precision", "fp32"),
                )
                counter.steps = sum(int(t) for _s, _q, t in accountant.history)
                counter.examples_seen += n_images
                total += loss_sum
                images += n_images
                value = loss_sum / n_images if n_images else float("nan")
                if on_step is not None:
                    on_step(counter.steps, value)
                bar.update(steps=counter.steps, loss=value)
            epoch_seconds.append(time.perf_counter() - t0)
            epoch_losses.append(total / max(images, 1))
            if epsilon_fn is not None:
                bar.update(steps=counter.steps, eps=epsilon_fn(counter.steps))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    history = [(float(s), float(q), int(t)) for s, q, t in accountant.history]
    dp_model._close()
    return TrainResult(
        model=model.to("cpu").eval(),
        steps=counter.steps,
        history=history,
        epoch_losses=epoch_losses,
        seconds=seconds,
        epoch_seconds=epoch_seconds,
        device=str(device),
        grad_sample_mode="hooks",
        peak_memory_bytes=peak,
        noise_source=source,
        extra={
            "unit_of_privacy": "patient",
            "patients": plan.n,
            "max_images_per_patient_step": cap,
            "max_images_in_a_step": max_seen,
        },
    )


def _one_step(
    dp_model: Any,
    optimizer: Any,
    criterion: Any,
    dataset: Any,
    chosen: list[np.ndarray],
    batches: list[list[int]],
    trainable: list[Any],
    device: torch.device,
    *,
    precision: str = "fp32",
) -> tuple[float, int]:
    """One logical step over its physical batches; returns (summed loss, images). Under
    ``amp`` the forward runs in bfloat16 (dpgov.training.precision); the per-patient sums,
    norms and clipping are float32 in :class:`PatientDPOptimizer` whatever the dtype."""
    import torch

    loss_sum, n_images = 0.0, 0
    plan = batches or [[]]
    for b, members in enumerate(plan):
        last = b == len(plan) - 1
        optimizer.zero_grad()
        if members:
            idx = np.concatenate([chosen[m] for m in members])
            local = np.concatenate(
                [np.full(len(chosen[m]), j, dtype=np.int64) for j, m in enumerate(members)]
            )
            xb, yb = (t.to(device) for t in _rows(dataset, idx))
            with autocast(precision, device):
                out = dp_model(xb)
            loss = criterion(out.float(), yb)
            with warnings.catch_warnings():  # inputs need no grad: Opacus's hooks still fire
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            loss_sum += float(loss.item()) if math.isfinite(float(loss.item())) else 0.0
            n_images += len(idx)
            optimizer.patient_index = torch.as_tensor(local, device=device)
            optimizer.patients = len(members)
        else:
            _empty_grad_samples(trainable)
            optimizer.patient_index = torch.zeros((0,), dtype=torch.long, device=device)
            optimizer.patients = 0
        optimizer.signal_skip_step(do_skip=not last)
        optimizer.step()
    return loss_sum, n_images
