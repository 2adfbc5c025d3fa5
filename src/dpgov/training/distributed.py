"""Patient-level DP-SGD over ``W`` processes on one node (Opacus DPDDP), sharded by patient.

The mechanism is exactly the single-process one of :mod:`dpgov.training.patient_level`
(``σ``, ``q``, ``T``, ``C``); only the work is split:

1. the patients are dealt to ``W`` ranks (:func:`patient_shards`): every record of a patient
   lies on one rank, and the shards are disjoint and cover everyone;
2. each step, each rank samples each patient of its shard independently with the same rate
   ``q`` (Opacus's :class:`~opacus.utils.uniform_sampler.UniformWithReplacementSampler`, which
   runs ``int(1/q)`` steps per epoch whatever the shard's size, so every rank takes the same
   steps). Independent Bernoulli(``q``) choices over disjoint shards are, together, one
   Poisson sample at rate ``q`` of all patients;
3. each rank clips each sampled patient's summed gradient to ``C`` and sums
   (``PatientDPOptimizer.clip_and_accumulate``); Opacus's
   :class:`~opacus.optimizers.DistributedDPOptimizer` adds ``N(0, σ²C²)`` on rank 0 only
   (the other ranks pass their sums on), each rank divides by its expected share ``qP/W``,
   then the gradients are all-reduced (summed) and divided by ``W``: every rank holds
   ``(Σ clipped + N(0, σ²C²)) / (qP)``, the single-process step, with the noise added once;
4. the model is wrapped in
   :class:`~opacus.distributed.DifferentiallyPrivateDistributedDataParallel`, which broadcasts
   rank 0's weights at the start; identical gradients then keep the ranks identical.

Masks and noise come from each rank's own generators (:func:`rank_generators`): fresh OS
entropy per rank, never a shared seed (with ``train.reproducible_noise`` the seeds differ by
rank). ``T`` steps therefore charge :class:`~dpgov.accounting.DpSgdMechanism` ``(σ, q, T)``,
and every rank's Opacus accountant history must say so (checked after the join).

Backends: ``gloo`` (CPU processes; what the tests run) or ``nccl`` (one GPU per rank,
``cuda:rank``). docs/scaling.md describes the design and what is not done.
"""

from __future__ import annotations

import os
import pickle
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.errors import UsageError
from dpgov.gate.noise import NOISE_CSPRNG, NOISE_OS_ENTROPY, NOISE_SEED
from dpgov.training.patient_level import (
    _one_step,
    _patient_optimizer_class,
    _secure_generator,
    pack_physical,
    patient_groups,
)
from dpgov.training.trainer import (
    SamplingPlan,
    StepCounter,
    TrainResult,
    _optimizer,
    _tensors,
    check_history,
    check_secure_rng,
    noise_source,
    seed_everything,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

BACKENDS = ("gloo", "nccl")


def patient_shards(patient_id: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Row indices of each rank's shard: patients (in order of first appearance) dealt
    round-robin to ``world_size`` ranks, all of a patient's rows on one rank."""
    if world_size < 1:
        raise UsageError(f"train.world_size: must be at least 1, found {world_size}")
    patients, rows = patient_groups(patient_id)
    if len(patients) < world_size:
        raise UsageError(
            f"train.world_size: {world_size} ranks for {len(patients)} patients; "
            f"use at most {len(patients)}"
        )
    shards: list[list[np.ndarray]] = [[] for _ in range(world_size)]
    for j, r in enumerate(rows):
        shards[j % world_size].append(r)
    return [np.sort(np.concatenate(s)) for s in shards]


def rank_generators(
    source: str, seed: int, rank: int, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """(sampler generator on the CPU, noise generator on ``device``) of one rank: 64 fresh
    bits of OS entropy each (``os_entropy``), or ``seed + 2·rank`` and ``seed + 2·rank + 1``
    (``seed``; rank 0's are the single-process ones), or torchcsprng's /dev/urandom device
    (``csprng``). Never one seed shared by the ranks: their masks must be independent."""
    import torch

    if source == NOISE_CSPRNG:
        gen = _secure_generator()
        return gen, gen
    if source == NOISE_SEED:
        sampler_seed, noise_seed = seed + 2 * rank, seed + 2 * rank + 1
    elif source == NOISE_OS_ENTROPY:
        sampler_seed, noise_seed = secrets.randbits(64), secrets.randbits(64)
    else:
        raise ValueError(f"unknown noise source {source!r}")
    return (
        torch.Generator().manual_seed(sampler_seed),
        torch.Generator(device=device).manual_seed(noise_seed),
    )


def _distributed_patient_optimizer_class() -> type:
    """PatientDPOptimizer's per-patient clipping with Opacus's DistributedDPOptimizer's noise
    on rank 0 only and its all-reduce (method resolution: patient, distributed, DPOptimizer)."""
    from opacus.optimizers import DistributedDPOptimizer

    patient = _patient_optimizer_class()

    class DistributedPatientDPOptimizer(patient, DistributedDPOptimizer):  # type: ignore[misc,valid-type]
        pass

    return DistributedPatientDPOptimizer


@dataclass(frozen=True)
class _Job:
    model: bytes  # pickled by value: spawn's pickler would put the tensors in shared memory
    x: np.ndarray
    y: np.ndarray
    patient_id: np.ndarray
    plan: SamplingPlan
    noise_multiplier: float
    max_grad_norm: float
    max_images_per_patient_step: int
    cfg: Any
    world_size: int
    backend: str
    init_file: str
    out_dir: str


def _rank_main(rank: int, job: _Job) -> None:
    """One rank's training (the target of :func:`torch.multiprocessing.spawn`); writes
    ``rank<r>.pt`` (weights, accountant history, its shard's patients) to ``job.out_dir``."""
    import torch
    import torch.distributed as dist
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    if job.backend == "gloo":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.world_size))
    else:  # nccl: this rank's GPU before the group forms
        torch.cuda.set_device(rank)
    dist.init_process_group(
        job.backend,
        init_method=f"file://{job.init_file}",
        rank=rank,
        world_size=job.world_size,
    )
    try:
        device = torch.device(f"cuda:{rank}") if job.backend == "nccl" else torch.device("cpu")
        cfg, plan = job.cfg, job.plan
        shard = patient_shards(job.patient_id, job.world_size)[rank]
        pid = np.asarray(job.patient_id)[shard]
        local_patients, local_rows = patient_groups(pid)
        rows = [shard[r] for r in local_rows]  # global row indices of each local patient
        seed_everything(cfg.seed)  # initialisation and dropout only
        model = pickle.loads(job.model).to(device)  # this rank's own copy of the weights
        model.train()
        sampler_gen, noise_gen = rank_generators(noise_source(cfg), cfg.seed, rank, device)
        dataset = _tensors(job.x, job.y)
        sampler = UniformWithReplacementSampler(
            num_samples=len(local_patients), sample_rate=plan.sample_rate, generator=sampler_gen
        )
        if len(sampler) != plan.steps_per_epoch:
            raise RuntimeError(
                f"rank {rank}: the sampler runs {len(sampler)} steps per epoch, "
                f"planned {plan.steps_per_epoch}"
            )
        dp_model = GradSampleModule(DPDDP(model), batch_first=True, loss_reduction="sum")
        optimizer = _distributed_patient_optimizer_class()(
            _optimizer(dp_model.parameters(), cfg),
            noise_multiplier=job.noise_multiplier,
            max_grad_norm=job.max_grad_norm,
            expected_batch_size=plan.expected_batch_size / job.world_size,  # this rank's share
            loss_reduction="mean",
            generator=noise_gen,
            secure_mode=noise_source(cfg) == NOISE_CSPRNG,
        )
        accountant = RDPAccountant()  # records (σ, q, steps) only
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
        criterion = torch.nn.BCEWithLogitsLoss(reduction="sum")
        cap = int(job.max_images_per_patient_step)
        trainable = [p for p in dp_model.parameters() if p.requires_grad]
        losses: list[float] = []
        images = 0
        for _epoch in range(plan.epochs):
            total, seen = 0.0, 0
            for sampled in sampler:
                chosen = []
                for i in (int(k) for k in sampled):
                    r = rows[i]
                    if len(r) > cap:  # a uniform subset, from this rank's secret generator
                        pick = torch.randperm(len(r), generator=sampler_gen)[:cap].numpy()
                        r = r[np.sort(pick)]
                    chosen.append(r)
                batches = pack_physical([len(r) for r in chosen], cfg.max_physical_batch_size)
                loss_sum, n = _one_step(
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
                total, seen = total + loss_sum, seen + n
            losses.append(total / max(seen, 1))
            images += seen
        dp_model._close()
        torch.save(
            {
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "history": [(float(s), float(q), int(t)) for s, q, t in accountant.history],
                "patients": [str(p) for p in local_patients],
                "epoch_losses": losses,
                "images": images,
            },
            Path(job.out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class RankOutcome:
    """What one rank reported after the join (tests read these)."""

    rank: int
    state_dict: dict[str, Any]
    history: list[tuple[float, float, int]]
    patients: list[str]
    epoch_losses: list[float]
    images: int


def train_patient_level_distributed(
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
    world_size: int,
    backend: str = "gloo",
    counter: StepCounter | None = None,
) -> tuple[TrainResult, list[RankOutcome]]:
    """Patient-level DP-SGD on ``world_size`` spawned processes (see the module docstring);
    returns rank 0's model as a :class:`TrainResult` and every rank's outcome. Raises
    RuntimeError when the ranks' weights or accountant histories differ, or when any rank's
    history is not ``(σ, q, T)`` of ``plan``. ``counter.steps`` is ``plan.steps`` from the spawn
    on (the ranks' progress is unknown until they join), so a crash aborts the reservation
    fully charged and never releases it; after the join it holds the steps the ranks took."""
    import torch
    import torch.multiprocessing as mp

    if backend not in BACKENDS:
        raise UsageError(f"distributed backend: unknown {backend!r}; use {', '.join(BACKENDS)}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise UsageError(
            f"train.world_size: {world_size} ranks need {world_size} GPUs; "
            f"{torch.cuda.device_count()} found"
        )
    if len(x) != len(y) or len(x) != len(patient_id):
        raise ValueError("x, y and patient_id differ in length")
    patients, _rows = patient_groups(patient_id)
    if len(patients) != plan.n:
        raise ValueError(f"plan was made for {plan.n} patients, got {len(patients)}")
    patient_shards(patient_id, world_size)  # refuse too many ranks before spawning
    if max_images_per_patient_step < 1 or max_images_per_patient_step > cfg.max_physical_batch_size:
        raise UsageError(
            "train.max_images_per_patient_step: must be 1 to train.max_physical_batch_size "
            f"({cfg.max_physical_batch_size}), found {max_images_per_patient_step}"
        )
    check_secure_rng(cfg.secure_rng)
    if counter is not None:  # the ranks' progress is unknown until the join: count all steps,
        counter.steps = plan.steps  # so a crash aborts the reservation fully charged
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpgov-dpddp-") as tmp:
        job = _Job(
            # by value: torch.multiprocessing's pickler would move the parameters to shared
            # memory, and every rank would then step the same tensors
            model=pickle.dumps(model.cpu()),
            x=x,
            y=y,
            patient_id=np.asarray(patient_id),
            plan=plan,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            max_images_per_patient_step=int(max_images_per_patient_step),
            cfg=cfg,
            world_size=int(world_size),
            backend=backend,
            init_file=str(Path(tmp) / "init"),
            out_dir=tmp,
        )
        mp.spawn(_rank_main, args=(job,), nprocs=world_size, join=True)
        outcomes = []
        for r in range(world_size):
            d = torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True)
            outcomes.append(
                RankOutcome(
                    rank=r,
                    state_dict=d["state_dict"],
                    history=[tuple(h) for h in d["history"]],
                    patients=list(d["patients"]),
                    epoch_losses=list(d["epoch_losses"]),
                    images=int(d["images"]),
                )
            )
    seconds = time.perf_counter() - started
    first = outcomes[0]
    for o in outcomes:
        check_history(
            o.history,
            noise_multiplier=noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
        )
        for k, v in first.state_dict.items():
            if not torch.equal(v, o.state_dict[k]):
                raise RuntimeError(f"rank {o.rank}'s {k} differs from rank 0's after training")
    steps = sum(int(t) for _s, _q, t in first.history)
    if counter is not None:
        counter.steps = steps
        counter.examples_seen += sum(o.images for o in outcomes)
    model.load_state_dict(first.state_dict)
    result = TrainResult(
        model=model.to("cpu").eval(),
        steps=steps,
        history=list(first.history),
        epoch_losses=first.epoch_losses,
        seconds=seconds,
        epoch_seconds=[],
        device=backend,
        grad_sample_mode="hooks",
        noise_source=noise_source(cfg),
        extra={
            "unit_of_privacy": "patient",
            "patients": plan.n,
            "max_images_per_patient_step": int(max_images_per_patient_step),
            "world_size": int(world_size),
        },
    )
    return result, outcomes
