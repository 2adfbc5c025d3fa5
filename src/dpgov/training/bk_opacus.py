"""The Opacus side of book-keeping clipping (:mod:`dpgov.training.bk_clipping`).

Three subclasses at Opacus's extension points, so that the privacy engine, the Poisson
sampler, the noise and the accountant stay Opacus's own: a grad-sample module that runs the
book-keeping rules during the one backward pass, a ``DPOptimizer`` whose clipping step takes the
clipped sums the pass left, and a ``PrivacyEngine`` that builds those two for
``grad_sample_mode="bk"`` and nothing else. They are defined on first use, so that importing
dpgov does not import Opacus (seconds; ``dpgov --help`` needs none).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dpgov.training.bk_clipping import BK, _clipped_sums, _Layer, _rules, first_without_bk

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


def privacy_engine(grad_sample_mode: str, **kwargs: Any) -> Any:
    """Opacus's ``PrivacyEngine(**kwargs)``, or for ``bk`` its subclass that wraps the model
    and the optimizer for book-keeping (everything else, accountant included, is Opacus's)."""
    from opacus import PrivacyEngine

    cls = bk_classes()[2] if grad_sample_mode == BK else PrivacyEngine
    return cls(**kwargs)


_CLASSES: list[tuple[Any, Any, Any]] = []


def _needing_grad(a: Any) -> Any:
    import torch

    if isinstance(a, torch.Tensor) and a.is_floating_point() and not a.requires_grad:
        return a.detach().requires_grad_(True)
    return a


def bk_classes() -> tuple[Any, Any, Any]:
    """(BKGradSampleModule, BKDPOptimizer, BKPrivacyEngine), defined on first use so that
    importing this module does not import Opacus (seconds; ``dpgov --help`` needs none)."""
    if not _CLASSES:
        _CLASSES.append(_define())
    return _CLASSES[0]


def _define() -> tuple[Any, Any, Any]:
    import torch
    from opacus import PrivacyEngine
    from opacus.grad_sample.gsm_base import AbstractGradSampleModule
    from opacus.optimizers.optimizer import (
        DPOptimizer,
        _check_processed_flag,
        _mark_as_processed,
    )

    class BKGradSampleModule(AbstractGradSampleModule):  # type: ignore[misc]
        """Keeps each supported layer's input and output gradient during the one backward
        pass and leaves every trainable parameter's clipped sum in ``p.bk_clipped`` (a list,
        one tensor per backward pass since the last ``zero_grad``)."""

        def __init__(
            self,
            m: nn.Module,
            *,
            batch_first: bool = True,
            loss_reduction: str = "mean",
            max_grad_norm: float = 1.0,
        ) -> None:
            missing = first_without_bk(m)
            if missing is not None:
                name, kind, why = missing
                raise NotImplementedError(f"book-keeping clipping: layer {name} ({kind}): {why}")
            if not batch_first:
                raise NotImplementedError("book-keeping clipping needs batch_first=True")
            if loss_reduction not in ("mean", "sum"):
                raise ValueError(f"loss_reduction must be mean or sum, got {loss_reduction!r}")
            if not isinstance(max_grad_norm, (int, float)):
                raise NotImplementedError("book-keeping clipping: one max_grad_norm (flat)")
            super().__init__(m, batch_first=batch_first, loss_reduction=loss_reduction)
            self.max_grad_norm = float(max_grad_norm)
            self.hooks_enabled = True
            self.grad_accumulation_allowed = True
            self.per_sample_gradient_norms: torch.Tensor | None = None
            self._rules = _rules()
            self._inputs: dict[nn.Module, torch.Tensor] = {}
            self._layers: list[_Layer] = []
            self._queued = False
            self._scale = 1.0
            self._trainable: list[Any] = [p for p in m.parameters() if p.requires_grad]
            for p in self._trainable:
                p.bk_clipped = None
            self._detach: list[tuple[str, Any]] = [
                (f"{mname}.{pname}" if mname else pname, p)
                for mname, module in m.named_modules()
                if type(module) in self._rules and not isinstance(module, torch.nn.Embedding)
                for pname, p in module.named_parameters(recurse=False)
                if p.requires_grad
            ]
            self._detached = False
            self._handles: list[Any] = []
            for module in m.modules():
                if type(module) in self._rules and any(
                    p.requires_grad for p in module.parameters(recurse=False)
                ):
                    self._handles.append(module.register_forward_hook(self._keep_input))

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            self._inputs.clear()  # a forward pass that no backward pass followed
            if not self.grad_accumulation_allowed and any(
                p.bk_clipped is not None for p in self._trainable
            ):
                raise ValueError(  # Opacus's rule: Poisson batches are not accumulated
                    "Poisson sampling is not compatible with grad accumulation: call "
                    "optimizer.step() or zero_grad() after each backward pass"
                )
            self._attach()
            if not (self._module.training and torch.is_grad_enabled() and self.hooks_enabled):
                return self._module(*args, **kwargs)
            # The parameters whose clipped sums come from the hooks do not require grad while
            # the graph is built: autograd then computes no (unclipped) gradient for them,
            # which book-keeping would only throw away. They require grad again as soon as
            # the backward pass reaches the first hook (and on zero_grad, cleanup and the next
            # forward). Floating inputs require grad so that the first layer's output gradient
            # still reaches its hook. Embedding weights stay as they are (their integer input
            # cannot carry a gradient; autograd's sum for them is cheap).
            for _name, p in self._detach:
                p.requires_grad_(False)
            self._detached = True
            return self._module(*(_needing_grad(a) for a in args), **kwargs)

        def _attach(self) -> None:
            if self._detached:
                for _name, p in self._detach:
                    p.requires_grad_(True)
                self._detached = False

        def _keep_input(self, module: nn.Module, inputs: Any, output: Any) -> None:
            """Forward hook: keep the input; hook the output's gradient (a tensor hook, which
            costs less than a module's full backward hook and sees the same gradient)."""
            if not (self.hooks_enabled and module.training and torch.is_grad_enabled()):
                return
            if module in self._inputs:
                raise NotImplementedError(
                    f"book-keeping clipping: {type(module).__name__} ran twice in one forward "
                    "pass (tied use); use grad_sample_mode hooks"
                )
            self._inputs[module] = inputs[0].detach()
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(functools.partial(self._keep_grad, module))

        def _keep_grad(self, module: nn.Module, grad_output: Any) -> None:
            if not self.hooks_enabled:
                return
            a = self._inputs.pop(module, None)
            if a is None:
                return
            self._attach()
            b = grad_output.detach().float()
            # per-example gradients of a summed loss: b × n, folded in at the end
            self._scale = float(a.shape[0]) if self.loss_reduction == "mean" else 1.0
            a = a.float() if a.is_floating_point() else a
            if a.shape[0] == 0:  # an empty Poisson batch: nothing to clip
                layer = _Layer(module, torch.zeros(0, device=b.device))
            else:
                layer = self._rules[type(module)][0](module, a, b)
            self._layers.append(layer)
            if not self._queued:  # runs once, when this backward pass has finished
                self._queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._finish)

        def _finish(self) -> None:
            self._attach()
            self._queued = False
            layers, self._layers = self._layers, []
            self._inputs.clear()  # layers whose output did not reach the loss
            sums, norms = _clipped_sums(layers, self.max_grad_norm, self._scale)
            self.per_sample_gradient_norms = norms
            for p in self._trainable:
                g = sums.get(p)
                g = torch.zeros_like(p) if g is None else g.to(p.dtype).reshape(p.shape)
                if p.bk_clipped is None:
                    p.bk_clipped = [g]
                else:
                    p.bk_clipped.append(g)

        def forbid_grad_accumulation(self) -> None:
            self.grad_accumulation_allowed = False

        def allow_grad_accumulation(self) -> None:
            self.grad_accumulation_allowed = True

        def zero_grad(self, set_to_none: bool = False) -> None:
            self._attach()
            for p in self._trainable:
                p.bk_clipped = None
            super().zero_grad(set_to_none)

        def remove_hooks(self) -> None:
            self._attach()
            self.hooks_enabled = False
            while self._handles:
                self._handles.pop().remove()

        def cleanup(self) -> None:
            super().cleanup()
            for p in self._trainable:
                if hasattr(p, "bk_clipped"):
                    del p.bk_clipped

    class BKDPOptimizer(DPOptimizer):  # type: ignore[misc]
        """Opacus's DPOptimizer whose clipping step takes the clipped sums the backward pass
        left (``p.bk_clipped``); noise, scaling and the accountant's hook are unchanged."""

        @property
        def accumulated_iterations(self) -> int:
            counts = [len(p.bk_clipped) for p in self.params if getattr(p, "bk_clipped", None)]
            return max(counts) if counts else 1

        def clip_and_accumulate(self) -> None:
            for p in self.params:
                parts = getattr(p, "bk_clipped", None)
                if parts is None:
                    raise ValueError(
                        "book-keeping clipping: no clipped gradient for a parameter; was the "
                        "backward pass run through the BKGradSampleModule?"
                    )
                _check_processed_flag(parts)
                grad = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)
                if p.summed_grad is not None:
                    p.summed_grad += grad
                else:
                    p.summed_grad = grad.clone()
                _mark_as_processed(parts)

        bk_module: Any = None  # set by BKPrivacyEngine.make_private

        def _attach(self) -> None:
            """Every parameter requires grad again (a forward pass no backward pass followed
            would otherwise hide them from ``self.params``)."""
            if self.bk_module is not None:
                self.bk_module._attach()

        def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
            self._attach()
            if not self.params:
                return True
            self.clip_and_accumulate()
            if self._check_skip_next_step():
                self._is_last_step_skipped = True
                return False
            self.add_noise()
            self.scale_grad()
            if self.step_hook:
                self.step_hook(self)
            self._is_last_step_skipped = False
            return True

        def zero_grad(self, set_to_none: bool = False) -> None:
            self._attach()
            for p in self.params:
                p.bk_clipped = None  # type: ignore[attr-defined]
            super().zero_grad(set_to_none)

    class BKPrivacyEngine(PrivacyEngine):  # type: ignore[misc]
        """PrivacyEngine that, for ``grad_sample_mode="bk"`` only, wraps the model in
        :class:`BKGradSampleModule` and the optimizer in :class:`BKDPOptimizer`."""

        def make_private(self, **kwargs: Any) -> Any:
            wrapped = super().make_private(**kwargs)
            if kwargs.get("grad_sample_mode") == BK:
                wrapped[1].bk_module = wrapped[0]
            return wrapped

        def _prepare_model(self, module: nn.Module, **kwargs: Any) -> Any:
            if kwargs.get("grad_sample_mode") != BK:
                return super()._prepare_model(module, **kwargs)
            if not kwargs.get("wrap_model", True):
                raise NotImplementedError("book-keeping clipping wraps the model")
            self.validate(module=module, optimizer=None, data_loader=None)
            if isinstance(module, AbstractGradSampleModule):
                raise ValueError("book-keeping clipping: pass the plain nn.Module")
            return BKGradSampleModule(
                module,
                batch_first=kwargs.get("batch_first", True),
                loss_reduction=kwargs.get("loss_reduction", "mean"),
                max_grad_norm=kwargs.get("max_grad_norm", 1.0),
            )

        def _prepare_optimizer(self, **kwargs: Any) -> Any:
            if kwargs.get("grad_sample_mode") != BK:
                return super()._prepare_optimizer(**kwargs)
            if kwargs.pop("distributed", False) or kwargs.pop("clipping", "flat") != "flat":
                raise NotImplementedError("book-keeping clipping: flat clipping, one process")
            kwargs.pop("grad_sample_mode")
            optimizer = kwargs.pop("optimizer")
            if isinstance(optimizer, DPOptimizer):
                optimizer = optimizer.original_optimizer
            noise_generator = kwargs.pop("noise_generator", None)
            generator = self.secure_rng if self.secure_mode else noise_generator
            return BKDPOptimizer(
                optimizer=optimizer, generator=generator, secure_mode=self.secure_mode, **kwargs
            )

    return BKGradSampleModule, BKDPOptimizer, BKPrivacyEngine
