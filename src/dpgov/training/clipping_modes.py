"""Why a run clips per-example gradients the way it does (issue 21 item 3, ``auto``).

``train.grad_sample_mode: auto`` is decided per model (:func:`choose_mode`, then
:func:`dpgov.training.precision.check_precision`, then patient-level DP-SGD in
:mod:`dpgov.training.planning`): book-keeping (:mod:`dpgov.training.bk_clipping`: clipped sums
in one backward pass, no per-example gradient kept) where every layer with trainable weights
has a book-keeping rule (Linear, Conv2d, GroupNorm, LayerNorm, Embedding); else ghost clipping
(Opacus's fast gradient clipping: per-example norms without per-example gradients, two backward
passes) where every such layer has one of Opacus's norm samplers; else hooks (per-example
gradients materialised, one backward pass). :func:`mode_reason` states which rule decided, in
one line, naming the first layer that ruled the faster modes out; the run logs it (MLflow
param :data:`REASON_PARAM`, the run's plan and its text output).

On this CPU (``benchmarks/RESULTS_training.md``, both sides on the vectorised loader) ghost ran
≈ 5× and hooks ≈ 10× the non-private time for the MLP, hooks 1.8× and ghost 2.4× for the CNN
(section 0); book-keeping ran below both for the MLP and the CNN (section 0b), which is the
order ``auto`` picks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dpgov.errors import UsageError
from dpgov.training.bk_clipping import BK, first_without_bk
from dpgov.training.trainer import choose_grad_sample_mode

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

REASON_PARAM = "grad_sample_mode_reason"  # the MLflow param and the plan's key


def first_without_ghost(model: nn.Module) -> tuple[str, str] | None:
    """(name, type) of the first weighted layer with no ghost-clipping norm sampler, or None."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and type(module) not in samplers:
            return name or "(model)", type(module).__name__
    return None


def choose_mode(requested: str, model: nn.Module) -> str:
    """``auto`` → "bk" where every trainable layer has a book-keeping rule, else what
    :func:`dpgov.training.trainer.choose_grad_sample_mode` picks (ghost, else hooks);
    ``bk`` asked for on a model it cannot clip is a usage error naming the layer."""
    missing = first_without_bk(model)
    if requested == BK:
        if missing is not None:
            name, kind, why = missing
            raise UsageError(
                f"train.grad_sample_mode: 'bk' cannot clip layer {name} ({kind}): {why}; "
                "use auto, ghost or hooks"
            )
        return BK
    if requested == "auto" and missing is None:
        return BK
    return choose_grad_sample_mode(requested, model)


def _kinds(model: nn.Module) -> str:
    kinds = {
        type(m).__name__
        for m in model.modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    }
    return ", ".join(sorted(kinds))


def mode_reason(
    requested: str,
    chosen: str,
    model: nn.Module,
    *,
    precision: str = "fp32",
    patient_level: bool = False,
) -> str:
    """One line: why ``chosen`` is the mode for ``model`` when ``requested`` was asked for."""
    if requested != "auto":
        return f"{chosen}: asked for (train.grad_sample_mode: {requested})"
    if patient_level:
        return (
            f"auto chose {chosen}: patient-level DP-SGD sums per-example gradients per "
            "patient, which needs them materialised"
        )
    if precision == "amp" and chosen == "hooks":
        return (
            "auto chose hooks: train.precision amp keeps per-sample gradients in float32, "
            "which ghost clipping cannot"
        )
    if chosen == BK:
        return (
            f"auto chose bk: every weighted layer has a book-keeping rule ({_kinds(model)}); "
            "clipped sums in one backward pass, no per-example gradients kept"
        )
    no_bk = first_without_bk(model)
    why_not_bk = f"; bk: layer {no_bk[0]} ({no_bk[1]}) has no rule" if no_bk else ""
    missing = first_without_ghost(model)
    if chosen == "ghost" and missing is None:
        return (
            "auto chose ghost: every weighted layer has a ghost-clipping norm sampler "
            f"({_kinds(model)}); per-example norms only, in two backward passes{why_not_bk}"
        )
    if missing is not None:
        name, kind = missing
        return (
            f"auto chose {chosen}: layer {name} ({kind}) has no ghost-clipping norm sampler "
            f"in Opacus, so per-example gradients are materialised{why_not_bk}"
        )
    return f"auto chose {chosen}"
