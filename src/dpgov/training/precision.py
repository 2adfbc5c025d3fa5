"""Mixed precision that stays safe for DP-SGD (``train.precision: fp32 | amp``).

DP-SGD's guarantee rests on three computations: each example's gradient norm, its clipping
to ``C``, and the Gaussian noise ``N(0, σ²C²)`` added to the sum. Under ``amp`` only the
forward and backward passes run in reduced precision (``torch.autocast`` with **bfloat16**);
the three stay in float32:

- Opacus's per-sample gradients come out of an autocast backward pass in bfloat16 (seen with
  Opacus 1.6.0); :func:`grad_samples_to_fp32` casts them to float32 before the optimizer's
  ``pre_step`` computes the norms and clips, so a norm rounded down by bfloat16's 8-bit
  mantissa (relative error up to 2⁻⁸) cannot let a clipped gradient exceed ``C``;
- the parameters stay float32 (autocast keeps them so), hence the summed gradient Opacus
  adds its noise to, and the noise itself, are float32.

Why bfloat16 and not float16 with a ``GradScaler``: the scaler multiplies the loss, so every
per-sample gradient, by a dynamic factor ``s`` before Opacus clips it; clipping then bounds
``s·g`` by ``C`` (the sensitivity becomes ``C/s``, unknown in advance), and the scaler's
overflow-skipped steps would skip noised steps the ledger was charged for. bfloat16 has
float32's exponent range and needs no scaler.

Ghost clipping computes per-sample norms inside its hooks, in the autocast dtype: ``amp`` is
refused with ``grad_sample_mode: ghost`` (:func:`check_precision`); ``auto`` picks hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from dpgov.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("fp32", "amp")
AMP_DTYPE = "bfloat16"


def check_precision(precision: str, requested: str, chosen: str) -> str:
    """The grad-sample mode to use under ``precision``, given the ``requested`` one
    (``train.grad_sample_mode``) and the one ``auto`` ``chosen``: hooks under amp (exit 2 for
    ghost asked for explicitly)."""
    if precision not in PRECISIONS:
        raise UsageError(f"train.precision: unknown {precision!r}; use fp32 or amp")
    if precision == "amp":
        if requested == "ghost":
            raise UsageError(
                "train.precision: amp needs grad_sample_mode hooks (ghost clipping computes "
                "per-sample norms in the autocast dtype); use hooks or auto"
            )
        return "hooks"
    return chosen


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The forward (and loss) context: bfloat16 autocast under ``amp``, nothing under fp32."""
    if precision != "amp":
        yield
        return
    import torch

    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def grad_samples_to_fp32(params: Iterable[Any]) -> int:
    """Cast every per-sample gradient (``p.grad_sample``, a tensor or Opacus's list of them)
    of ``params`` to float32 in place; call after ``backward`` and before the DP optimizer's
    step. Returns how many were cast."""
    import torch

    cast = 0
    for p in params:
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            continue
        if isinstance(gs, list):
            if any(g.dtype != torch.float32 for g in gs):
                p.grad_sample = [g.float() for g in gs]
                cast += 1
        elif gs.dtype != torch.float32:
            p.grad_sample = gs.float()
            cast += 1
    return cast


def logits_fp32(out: torch.Tensor) -> torch.Tensor:
    """The model's logits as float32 (the loss is computed outside reduced precision)."""
    return out.float()
