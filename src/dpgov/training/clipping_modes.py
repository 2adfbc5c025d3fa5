"""Why a run clips per-example gradients the way it does (issue 21 item 3, ``auto``).

``train.grad_sample_mode: auto`` is decided per model (:func:`dpgov.training.trainer.
choose_grad_sample_mode`, then :func:`dpgov.training.precision.check_precision`, then
patient-level DP-SGD in :mod:`dpgov.training.planning`): ghost clipping (Opacus's fast gradient
clipping: per-example norms without per-example gradients, two backward passes) where every
layer with trainable weights has one of Opacus's norm samplers, else hooks (per-example
gradients materialised, one backward pass). :func:`mode_reason` states which rule decided, in
one line, naming the first layer that ruled ghost out; the run logs it (MLflow param
:data:`REASON_PARAM`, the run's plan and its text output).

On this CPU ghost ran 1.9× and hooks 2.3× the non-private time for the MLP, and hooks 1.9×,
ghost 2.6× for the CNN (``benchmarks/RESULTS_training.md``), which is the order ``auto`` picks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    missing = first_without_ghost(model)
    if chosen == "ghost" and missing is None:
        kinds = sorted(
            {
                type(m).__name__
                for m in model.modules()
                if any(p.requires_grad for p in m.parameters(recurse=False))
            }
        )
        return (
            "auto chose ghost: every weighted layer has a ghost-clipping norm sampler "
            f"({', '.join(kinds)}); per-example norms only, in two backward passes"
        )
    if missing is not None:
        name, kind = missing
        return (
            f"auto chose {chosen}: layer {name} ({kind}) has no ghost-clipping norm sampler "
            "in Opacus, so per-example gradients are materialised"
        )
    return f"auto chose {chosen}"
