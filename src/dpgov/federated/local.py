"""What one site runs per round: its prepared data, the global model, and its local training.

Flower's ClientApp calls these (the engine lives elsewhere); nothing here imports Flower, so a
site's training is tested, timed and audited without a federation.

Record mode (``private=True``): exactly ``spec.local_steps`` steps of DP-SGD with Opacus, the
Poisson-subsampled Gaussian mechanism the site's ledger is charged for
(``DpSgdMechanism(σ, q, local_steps)``):

- each step samples every *unit* independently with probability ``q = min(1, B/U)`` (``B``
  ``spec.batch_size``, ``U`` the site's training units), with Opacus's own
  ``UniformWithReplacementSampler`` (``steps=local_steps``, so a round is not tied to an
  epoch). The unit is the *patient* when some patient holds several training records
  (patient-level DP-SGD, :mod:`dpgov.training.patient_level`: every record of a sampled
  patient enters, and the patient's summed gradient is clipped), else the record;
- gradients are clipped to ``spec.clip`` per unit (Opacus's ``DPOptimizer``, or dpgov's
  ``PatientDPOptimizer`` for patients), summed, noised with ``N(0, σ²C²)``
  (``σ = spec.noise_multiplier``) and divided by the expected batch ``qU``;
- the sampling masks and the noise come from dpgov's secret generators
  (:func:`dpgov.training.trainer.noise_generators`: 64 bits of OS entropy each, never kept),
  and, as the trainer does, the run fails unless Opacus draws from exactly those two;
- Opacus's RDP accountant, hooked to the optimizer, records what ran; the result's ``steps``
  and ``sample_rate`` are that record, checked against the plan with
  :func:`dpgov.training.trainer.check_history` (any mismatch raises: the charge would not be
  the run).

``spec.seed`` seeds only what is not private (the shared initialisation, site mode's batch
order). Site mode (``private=False``): ``local_steps`` plain minibatch SGD steps, no clipping
or noise here; the server clips the site's update and adds the noise.

A round runs on the CPU with one intra-op thread (restored afterwards): batches of a few dozen
tabular rows are far too small to split, and on 2 busy cores torch's default two threads made
10 steps take 0.3 s instead of 0.02 s (measured here).
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.errors import UsageError
from dpgov.gate.noise import NOISE_CSPRNG, NOISE_OS_ENTROPY
from dpgov.training import inputs
from dpgov.training.inputs import Arrays
from dpgov.training.models import build_model, input_spec
from dpgov.training.params import ModelParams
from dpgov.training.patient_level import (
    _secure_generator,
    patient_dp_optimizer,
    patient_groups,
    records_per_patient,
)
from dpgov.training.poisson_loader import ShuffledBatches
from dpgov.training.trainer import check_history, check_secure_rng, noise_generators

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from dpgov.federated.types import FederatedSpec


@dataclass
class LocalData:
    """One site's prepared data as arrays, loaded once and reused every round."""

    train: Arrays
    test: Arrays
    meta: dict[str, Any]
    version: str  # the prepared folder's data version (DVC md5)
    n_features: int
    records_per_patient: int  # the most training records one patient holds

    @property
    def patient_level(self) -> bool:
        """Whether DP-SGD samples and clips patients (some patient has several records)."""
        return self.records_per_patient > 1

    @property
    def units(self) -> int:
        """Training units DP-SGD samples: patients when patient-level, else records."""
        if self.patient_level:
            return len(np.unique(self.train.patient_id))
        return len(self.train.y)


def load_site_data(prepared_dir: str | Path) -> LocalData:
    """A site's prepared folder (``dpgov data prepare``'s output) as :class:`LocalData`."""
    prepared, version = inputs.load_data(prepared_dir)
    spec = input_spec(prepared.meta)
    if spec.kind != "tabular":
        raise UsageError(
            f"federated site data {prepared_dir}: only tabular prepared data is supported, "
            f"found {spec.kind!r}"
        )
    train = inputs.arrays(prepared, "train")
    test = inputs.arrays(prepared, "test")
    if len(train.y) == 0:
        raise UsageError(f"federated site data {prepared_dir}: the train split is empty")
    return LocalData(
        train=train,
        test=test,
        meta=dict(prepared.meta),
        version=version,
        n_features=spec.n_features,
        records_per_patient=records_per_patient(train.patient_id),
    )


def _model(spec: FederatedSpec, data: LocalData) -> nn.Module:
    cfg = ModelParams(name=spec.model, hidden=[int(spec.hidden)])
    return build_model(cfg, input_spec(data.meta))


def build_site_model(spec: FederatedSpec, data: LocalData) -> nn.Module:
    """The federation's model for this site's inputs. With ``spec.seed`` the initialisation
    is seeded, so every site and the server build the same starting weights."""
    import torch

    if spec.seed is not None:
        torch.manual_seed(spec.seed)
    return _model(spec, data)


def get_arrays(model: nn.Module) -> list[np.ndarray]:
    """The model's state as NumPy copies, in ``state_dict`` order (what Flower sends)."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load ``arrays`` (in :func:`get_arrays`'s order) into ``model``; shapes must match."""
    import torch

    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(f"model has {len(state)} tensors, got {len(arrays)} arrays")
    new = {}
    for (name, old), arr in zip(state.items(), arrays, strict=True):
        value = torch.as_tensor(np.asarray(arr), dtype=old.dtype)
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"{name}: expected shape {tuple(old.shape)}, got {tuple(value.shape)}")
        new[name] = value
    model.load_state_dict(new, strict=True)


@dataclass
class LocalResult:
    """A site's round: the new weights and, for record mode, the mechanism Opacus ran."""

    arrays: list[np.ndarray]  # state_dict order of the plain model
    steps: int  # optimizer steps taken (record mode: Opacus's accountant's count)
    sample_rate: float  # q (record mode: as Opacus's accountant recorded it); 1 step = 1 batch
    examples: int  # the site's training records (the weight of ``weights: records``)
    loss: float  # mean training loss per record over the round's batches
    unit: str = "record"  # what DP-SGD sampled and clipped: "record" or "patient"
    history: list[tuple[float, float, int]] = field(default_factory=list)  # Opacus (σ, q, T)
    examples_seen: int = 0  # records that entered the round's batches


def train_local(
    arrays: list[np.ndarray],
    data: LocalData,
    spec: FederatedSpec,
    *,
    private: bool,
    round_index: int = 0,
) -> LocalResult:
    """One round at one site, from the global weights ``arrays``: DP-SGD (``private``, record
    mode) or plain SGD (site mode). ``round_index`` varies site mode's (public) batch order
    between rounds when ``spec.seed`` is set."""
    if spec.local_steps < 1:
        raise UsageError(f"federated local_steps: must be at least 1, found {spec.local_steps}")
    if spec.batch_size < 1:
        raise UsageError(f"federated batch_size: must be at least 1, found {spec.batch_size}")
    import torch

    with torch.random.fork_rng(devices=[]):  # its init is overwritten: leave the caller's RNG
        model = _model(spec, data)
    set_arrays(model, arrays)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tabular batches: intra-op threads only contend (docstring)
    try:
        if private:
            return _train_dp(model, data, spec)
        return _train_plain(model, data, spec, round_index=round_index)
    finally:
        torch.set_num_threads(threads)


def _tensors(data: LocalData) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    x = torch.as_tensor(np.ascontiguousarray(data.train.x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(data.train.y), dtype=torch.float32)
    return x, y


def _train_plain(
    model: nn.Module, data: LocalData, spec: FederatedSpec, *, round_index: int
) -> LocalResult:
    """``local_steps`` minibatch SGD steps over shuffled batches (reshuffled when used up)."""
    import torch

    x, y = _tensors(data)
    n = len(y)
    seed = secrets.randbits(63) if spec.seed is None else int(spec.seed) + 7919 * round_index
    batches = ShuffledBatches(
        num_samples=n,
        batch_size=min(spec.batch_size, n),
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr)
    criterion = torch.nn.BCEWithLogitsLoss(reduction="sum")
    model.train()
    total, seen, steps = 0.0, 0, 0
    while steps < spec.local_steps:
        for idx in batches:
            if steps == spec.local_steps:
                break
            index = torch.as_tensor(idx, dtype=torch.long)
            optimizer.zero_grad()
            loss = criterion(model(x[index]), y[index])
            (loss / len(index)).backward()
            optimizer.step()
            total += float(loss.item())
            seen += len(index)
            steps += 1
    model.eval()
    return LocalResult(
        arrays=get_arrays(model),
        steps=steps,
        sample_rate=min(1.0, spec.batch_size / n),
        examples=n,
        loss=total / max(seen, 1),
        unit="record",
        examples_seen=seen,
    )


def _train_dp(model: nn.Module, data: LocalData, spec: FederatedSpec) -> LocalResult:
    """Exactly ``local_steps`` Opacus DP-SGD steps over Poisson-sampled units."""
    import torch
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    secure = bool(getattr(spec, "secure_rng", False))
    check_secure_rng(secure)  # refuses when torchcsprng is missing
    source = NOISE_CSPRNG if secure else NOISE_OS_ENTROPY
    device = torch.device("cpu")
    sampler_gen, noise_gen = noise_generators(source, 0, device)  # seed unused: OS entropy
    if source == NOISE_CSPRNG:  # as Opacus's secure mode: one /dev/urandom generator for both
        sampler_gen = noise_gen = _secure_generator()
    if sampler_gen is None or noise_gen is None:  # never the global generator spec.seed seeds
        raise RuntimeError(f"noise source {source!r} gave no generator for masks or noise")

    x, y = _tensors(data)
    if data.patient_level:
        _ids, rows = patient_groups(data.train.patient_id)
    else:
        rows = [np.array([i], dtype=np.int64) for i in range(len(y))]
    units = len(rows)
    q = min(1.0, spec.batch_size / units)
    sampler = UniformWithReplacementSampler(
        num_samples=units, sample_rate=q, generator=sampler_gen, steps=spec.local_steps
    )
    dp_model = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    base = torch.optim.SGD(dp_model.parameters(), lr=spec.lr)
    optimizer: Any
    if data.patient_level:
        optimizer = patient_dp_optimizer(
            base,
            noise_multiplier=spec.noise_multiplier,
            max_grad_norm=spec.clip,
            expected_patients=q * units,
            generator=noise_gen,
            secure_mode=secure,
        )
    else:
        optimizer = DPOptimizer(
            base,
            noise_multiplier=spec.noise_multiplier,
            max_grad_norm=spec.clip,
            expected_batch_size=q * units,
            loss_reduction="mean",
            generator=noise_gen,
            secure_mode=secure,
        )
    # both secret generators must be the ones Opacus draws from (as the trainer checks)
    if sampler.generator is not sampler_gen or optimizer.generator is not noise_gen:
        raise RuntimeError("Opacus does not draw from dpgov's secret sampling and noise generators")
    accountant = RDPAccountant()  # records (σ, q, steps) only; the site's ledger accounts
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=q))
    criterion = torch.nn.BCEWithLogitsLoss(reduction="sum")
    trainable = [p for p in dp_model.parameters() if p.requires_grad]
    total, seen = 0.0, 0
    try:
        for sampled in sampler:
            picked = [rows[int(i)] for i in sampled]
            optimizer.zero_grad()
            if picked:
                idx = torch.as_tensor(np.concatenate(picked), dtype=torch.long)
                loss = criterion(dp_model(x[idx]), y[idx])
                with warnings.catch_warnings():  # inputs need no grad: Opacus's hooks still fire
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                total += float(loss.item())
                seen += len(idx)
                if data.patient_level:  # each row's patient, 0..k-1 within this step
                    local = np.repeat(np.arange(len(picked)), [len(r) for r in picked])
                    optimizer.patient_index = torch.as_tensor(local, dtype=torch.long)
                    optimizer.patients = len(picked)
            else:  # no unit sampled: a zero sum, noised and taken (and charged) like any other
                for p in trainable:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                if data.patient_level:
                    optimizer.patient_index = torch.zeros((0,), dtype=torch.long)
                    optimizer.patients = 0
            optimizer.step()
    finally:
        dp_model._close()  # the plain module: hooks off, parameters shared, no "_module." names
    history = [(float(s), float(r), int(t)) for s, r, t in accountant.history]
    steps = sum(t for _s, _r, t in history)
    check_history(history, noise_multiplier=spec.noise_multiplier, sample_rate=q, steps=steps)
    if steps != spec.local_steps:
        raise RuntimeError(f"Opacus ran {steps} steps, the round asked for {spec.local_steps}")
    model.eval()
    return LocalResult(
        arrays=get_arrays(model),
        steps=steps,
        sample_rate=history[0][1] if history else q,
        examples=len(y),
        loss=total / max(seen, 1),
        unit="patient" if data.patient_level else "record",
        history=history,
        examples_seen=seen,
    )
