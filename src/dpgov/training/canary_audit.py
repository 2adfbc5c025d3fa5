"""One audit run with canaries: DP-SGD as the candidate ran it, and the guesses it allows.

The run reproduces a candidate's mechanism (σ, q, T, C, optimizer, model, training data) and
adds ``m`` canaries, each included independently with probability ½. Included canaries are
extra privacy units: the Poisson sampler draws them at rate q with the records, on every step
(Opacus's ``DPDataLoader`` over records and canaries together), and whatever is sampled goes
through Opacus's ``DPOptimizer``: clipped per unit to C, summed, noised with N(0, σ²C²).

``white-box`` (gradient canaries, the auditor sees every step's noisy gradient): canary j's
per-sample gradient is C times the j-th unit vector of an audit coordinate block of m
parameters beside the model's own (Dirac canaries; the records' gradients are zero there,
and the noise reaches it as it reaches every parameter). Clipping is joint over all
parameters. With x_t = (noisy sum at coordinate j) / C, a canary sampled at step t adds 1 to
x_t ~ N(·, σ²); the score is the log-likelihood ratio of "in" against "out",
Σ_t log(1 - q + q·exp((x_t - ½)/σ²)), computed with the *claimed* σ and q.

``black-box`` (input canaries, the auditor sees only the final model): canary records are
out-of-distribution inputs (far outside the data's range) with random labels, trained on as
records; the score is minus the final model's loss on each.

Guesses and the bound: :mod:`dpgov.accounting.audit_bound` (top and bottom scores over a
grid of guess counts fixed in advance). The noise and the masks come from OS entropy unless a
seed is given (tests). ``_breakage`` is the test-only hook that runs a deliberately broken
mechanism while the claim stays (noise scaled, a larger true sample rate, shuffled batches):
no command or flow passes it.
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dpgov.accounting.audit_bound import AuditBound, best_of, default_grid
from dpgov.contracts import exceeds
from dpgov.errors import UsageError

WHITE_BOX = "white-box"
BLACK_BOX = "black-box"
THREAT_MODELS = (WHITE_BOX, BLACK_BOX)
THREAT_DESCRIPTIONS = {
    WHITE_BOX: "white-box gradient canaries on every step (the auditor sees every noisy step)",
    BLACK_BOX: "black-box input canaries (the auditor sees the final model only)",
}
CONFIDENCE = 0.95
# white-box: each step holds a (batch + canaries sampled) × m block of per-unit gradients
MAX_CANARIES = 100_000


@dataclass(frozen=True)
class AuditMechanism:
    """The mechanism the candidate claims (what its ledger entries were charged for)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float


@dataclass(frozen=True)
class Breakage:
    """Test-only: how the audit run departs from the claim (defaults: it does not)."""

    noise_scale: float = 1.0  # σ actually used = claimed σ × this (0: no noise)
    sample_rate_factor: float = 1.0  # q actually used = claimed q × this
    shuffled: bool = False  # fixed-size shuffled batches instead of Poisson sampling


@dataclass(frozen=True)
class AuditResult:
    """What ``dpgov audit-model --json`` prints (and MLflow and the gate record)."""

    epsilon_lower_bound: float
    epsilon_claimed: float
    ceiling: float
    canaries: int
    guesses: int
    correct: int
    delta: float
    confidence: float
    threat_model: str
    passed: bool
    steps: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_canaries(canaries: int) -> None:
    if not 2 <= canaries <= MAX_CANARIES:
        raise UsageError(f"--canaries: must be between 2 and {MAX_CANARIES}, found {canaries}")


def _generators(seed: int | None) -> tuple[Any, Any, np.random.Generator]:
    import torch

    bits = [secrets.randbits(63) for _ in range(3)] if seed is None else [seed, seed + 1, seed + 2]
    return (
        torch.Generator().manual_seed(bits[0]),
        torch.Generator().manual_seed(bits[1]),
        np.random.default_rng(bits[2]),
    )


def _loader(n_units: int, q: float, shuffled: bool, gen: Any) -> Any:
    import torch
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    units = TensorDataset(torch.arange(n_units))
    if shuffled:  # what the accounting does not describe: each unit once per epoch
        batch = max(1, round(q * n_units))
        return DataLoader(units, batch_size=batch, shuffle=True, generator=gen)
    return DPDataLoader(units, sample_rate=q, generator=gen)


def _optimizer(params: list[Any], cfg: Any) -> Any:
    import torch

    if getattr(cfg, "optimizer", "sgd") == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate)
    return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=getattr(cfg, "momentum", 0.0))


def _ood_canaries(x: np.ndarray, m: int, rng: np.random.Generator) -> tuple[Any, Any]:
    """Inputs far outside the data (each feature at ± (its largest |value| + 3)), random labels."""
    span = np.abs(x).max(axis=0) + 3.0
    signs = rng.choice([-1.0, 1.0], size=(m, x.shape[1]))
    xc = (signs * span * (1.0 + rng.random((m, x.shape[1])))).astype(np.float32)
    yc = rng.integers(0, 2, size=m).astype(np.float32)
    return xc, yc


def run_audit(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    mechanism: AuditMechanism,
    epsilon_claimed: float,
    delta: float,
    cfg: Any,
    canaries: int = 1000,
    threat_model: str = WHITE_BOX,
    confidence: float = CONFIDENCE,
    grid: Sequence[int] | None = None,
    seed: int | None = None,
    _breakage: Breakage | None = None,
) -> AuditResult:
    """One audit run of ``model`` (untrained, as the candidate started) on ``x``, ``y``.

    ``cfg`` carries the optimizer, learning rate and momentum (a
    :class:`~dpgov.training.params.TrainParams`). ``passed`` is False when the lower bound
    exceeds ``epsilon_claimed`` (:func:`dpgov.contracts.exceeds`).
    """
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    if threat_model not in THREAT_MODELS:
        raise UsageError(
            f"--threat-model: unknown {threat_model!r}; use {' or '.join(THREAT_MODELS)}"
        )
    check_canaries(canaries)
    brk = _breakage or Breakage()
    started = time.perf_counter()
    sampler_gen, noise_gen, rng = _generators(seed)
    if seed is not None:
        torch.manual_seed(seed)
    included = rng.random(canaries) < 0.5
    members = np.flatnonzero(included)  # canary ids in the run
    xr = np.ascontiguousarray(x, dtype=np.float32)
    yr = np.asarray(y, dtype=np.float32)
    if threat_model == BLACK_BOX:
        xc, yc = _ood_canaries(xr, canaries, rng)
        xr = np.concatenate([xr, xc[members]])
        yr = np.concatenate([yr, yc[members]])
        n_gradient_canaries = 0
    else:
        n_gradient_canaries = len(members)
    n_records = len(xr)
    xt, yt = torch.as_tensor(xr), torch.as_tensor(yr)
    sigma = mechanism.noise_multiplier * brk.noise_scale
    q = min(1.0, mechanism.sample_rate * brk.sample_rate_factor)
    c = mechanism.max_grad_norm

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    audit_block = torch.nn.Parameter(torch.zeros(max(canaries, 1)))
    params = [p for p in gsm.parameters() if p.requires_grad]
    if threat_model == WHITE_BOX:
        params.append(audit_block)
    n_units = n_records + n_gradient_canaries
    expected = q * n_units
    opt = DPOptimizer(
        _optimizer(params, cfg),
        noise_multiplier=sigma,
        max_grad_norm=c,
        expected_batch_size=max(1, round(expected)),
        loss_reduction="mean",
        generator=noise_gen,
    )
    loader = _loader(n_units, q, brk.shuffled, sampler_gen)
    if not brk.shuffled and getattr(loader, "sample_rate", None) != q:  # Opacus changed
        raise RuntimeError(f"Opacus samples at q={loader.sample_rate}, the audit asked for {q}")
    criterion = torch.nn.BCEWithLogitsLoss(reduction="mean")
    claimed_sigma, claimed_q = mechanism.noise_multiplier, mechanism.sample_rate
    scores = np.zeros(canaries)
    steps = 0
    gsm.train()
    with warnings.catch_warnings():  # Opacus on inputs without grad (first layer)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        while steps < mechanism.steps:
            for (idx,) in loader:
                if steps >= mechanism.steps:
                    break
                real = idx[idx < n_records]
                can = idx[idx >= n_records] - n_records  # positions in ``members``
                opt.zero_grad(set_to_none=True)
                if len(real):
                    loss = criterion(gsm(xt[real]).reshape(-1), yt[real])
                    loss.backward()
                model_params = params[:-1] if threat_model == WHITE_BOX else params
                for p in model_params:
                    gs = getattr(p, "grad_sample", None)
                    if gs is None:
                        gs = torch.zeros((0, *p.shape))
                    pad = torch.zeros((len(can), *p.shape))
                    p.grad_sample = torch.cat([gs, pad]) if len(can) else gs
                if threat_model == WHITE_BOX:
                    rows = torch.zeros((len(real) + len(can), canaries))
                    if len(can):
                        ids = torch.as_tensor(members)[can]
                        rows[torch.arange(len(real), len(real) + len(can)), ids] = c
                    audit_block.grad_sample = rows  # type: ignore[attr-defined]
                opt.step()
                steps += 1
                if threat_model == WHITE_BOX:
                    assert audit_block.grad is not None
                    noisy = audit_block.grad.detach().numpy() * opt.expected_batch_size / c
                    scores += _step_llr(noisy, sigma=claimed_sigma, q=claimed_q)
    if threat_model == BLACK_BOX:
        gsm.eval()
        with torch.no_grad():
            xc_t, yc_t = torch.as_tensor(xc), torch.as_tensor(yc)
            losses = torch.nn.functional.binary_cross_entropy_with_logits(
                gsm(xc_t).reshape(-1), yc_t, reduction="none"
            )
        scores = -losses.numpy().astype(float)
    _remove_hooks(gsm)
    bound = best_of(
        scores.tolist(),
        included.tolist(),
        grid=tuple(grid) if grid else default_grid(canaries),
        delta=delta,
        confidence=confidence,
    )
    return _result(bound, epsilon_claimed, threat_model, steps, time.perf_counter() - started)


def _step_llr(x: np.ndarray, *, sigma: float, q: float) -> np.ndarray:
    """log(1 - q + q·exp((x - ½)/σ²)) per coordinate: "sampled and in" against "not there"."""
    z = (x - 0.5) / (sigma * sigma)
    return np.logaddexp(math.log1p(-q) if q < 1 else -np.inf, math.log(q) + z)


def _remove_hooks(gsm: Any) -> None:
    fn = getattr(gsm, "_close", None)
    if callable(fn):
        fn()


def _result(
    bound: AuditBound, claimed: float, threat_model: str, steps: int, seconds: float
) -> AuditResult:
    return AuditResult(
        epsilon_lower_bound=bound.epsilon_lower_bound,
        epsilon_claimed=claimed,
        ceiling=bound.ceiling,
        canaries=bound.canaries,
        guesses=bound.guesses,
        correct=bound.correct,
        delta=bound.delta,
        confidence=bound.confidence,
        threat_model=threat_model,
        passed=not exceeds(bound.epsilon_lower_bound, claimed),
        steps=steps,
        seconds=seconds,
    )
