"""Book-keeping per-sample clipping: DP-SGD's clipped sum in one backward pass (issue 21).

Bu, Wang, Zha and Karypis, "Differentially Private Optimization on Large Model at Small Cost"
(ICML 2023, arXiv:2210.00038), Algorithm 1 ("BK"). Opacus's hooks mode materialises every
per-example gradient; its ghost clipping computes only their norms but then runs a second
backward pass with the loss reweighted by the clip factors. Book-keeping needs neither: during
the one backward pass each supported layer's input activations ``a`` (forward hook) and output
gradients ``b`` (backward hook) are kept, each example's squared gradient norm for the layer is
computed from them, and when the pass ends (a callback queued on autograd's engine) the clip
factors ``c_i = min(1, C / (‖g_i‖ + 1e-6))`` (Opacus's formula) give each parameter's clipped
sum ``Σ_i c_i g_i`` directly: for a Linear layer ``bᵀ diag(c) a``, for a convolution the
weight gradient of ``diag(c) b`` against ``a``, for an embedding an index-add of ``c_i b_i``.

Per layer, a norm is computed the cheaper of two ways (the paper's layer-wise choice): the
ghost norm ``Σ_{s,t} (a_s·a_t)(b_s·b_t)`` over the ``T`` positions of one example (``T``
tokens of a Linear, ``L`` output pixels of a convolution) costs ``T²(d+p)`` against
``T·d·p`` for the per-example gradient; for a 2-D Linear (``T = 1``) it is ``‖a‖²·‖b‖²``.
GroupNorm, LayerNorm and biases have small per-example gradients, which are kept instead.

What stays Opacus's: the privacy engine, the Poisson sampling, the noise (``N(0, σ²C²)`` from
the same generator, :meth:`DPOptimizer.add_noise`), the scaling and the accountant's hook.
:class:`BKPrivacyEngine` only swaps in :class:`BKGradSampleModule` and :class:`BKDPOptimizer`
for ``grad_sample_mode="bk"``; every other mode is Opacus's unchanged. The tests compare the
clipped sum with Opacus's hooks mode per layer type (``tests/unit/training/test_bk_clipping.py``).

Not supported (``auto`` then keeps ghost or hooks): a layer of another type with trainable
weights, a module called twice in one forward or a parameter shared by two layers (the cross
terms of tied weights), Conv2d with a padding mode other than zeros, Embedding with
``max_norm``, ``scale_grad_by_freq`` or ``sparse``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

BK = "bk"  # the grad_sample_mode
BK_LAYERS = ("Linear", "Conv2d", "GroupNorm", "LayerNorm", "Embedding")
_EPS = 1e-6  # Opacus's clip factor C / (norm + 1e-6)


def unsupported(module: nn.Module) -> str | None:
    """Why book-keeping cannot clip ``module``'s own trainable parameters, or None if it can."""
    from torch import nn

    own = [p for p in module.parameters(recurse=False) if p.requires_grad]
    if not own:
        return None
    kind = type(module)
    if kind not in (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm, nn.Embedding):
        return f"{kind.__name__} has no book-keeping rule"
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        return f"Conv2d padding_mode {module.padding_mode!r} (only zeros)"
    if isinstance(module, nn.Embedding) and (
        module.max_norm is not None or module.scale_grad_by_freq or module.sparse
    ):
        return "Embedding with max_norm, scale_grad_by_freq or sparse"
    return None


def first_without_bk(model: nn.Module) -> tuple[str, str, str] | None:
    """(name, type, why) of the first trainable layer book-keeping cannot clip, or None.

    A parameter held by two layers (tied weights) rules the model out too: its clipped sum
    would need the cross terms between the two uses."""
    seen: dict[int, str] = {}
    for name, module in model.named_modules():
        why = unsupported(module)
        label = name or "(model)"
        if why is not None:
            return label, type(module).__name__, why
        for p in module.parameters(recurse=False):
            if p.requires_grad and id(p) in seen:
                return label, type(module).__name__, f"parameter shared with {seen[id(p)]}"
            seen[id(p)] = label
    return None


def supports_bk(model: nn.Module) -> bool:
    return first_without_bk(model) is None


# --------------------------------------------------------------------------- per-layer rules


@dataclass
class _Layer:
    """What one layer's backward hook left for the end of the pass."""

    module: Any
    norm2: Any  # [n] squared per-example gradient norm over the layer's trainable parameters
    per_example: dict[Any, Any] = field(default_factory=dict)  # param → [n, *shape], kept
    activation: Any = None  # kept where the clipped sum is formed from a and b
    backprop: Any = None


def _ghost_cheaper(positions: int, d: int, p: int) -> bool:
    """Ghost norm T²(d+p) against the per-example gradient's T·d·p (Bu et al. 2023, §3)."""
    return positions * (d + p) < d * p


def _linear(module: Any, a: Any, b: Any) -> _Layer:
    import torch

    n = a.shape[0]
    a3 = a.reshape(n, -1, a.shape[-1])
    b3 = b.reshape(n, -1, b.shape[-1])
    layer = _Layer(module, torch.zeros(n, device=b.device, dtype=b.dtype))
    w = module.weight
    if w.requires_grad:
        t, d, p = a3.shape[1], a3.shape[2], b3.shape[2]
        if t == 1:
            layer.norm2 = layer.norm2 + a3.pow(2).sum((1, 2)) * b3.pow(2).sum((1, 2))
        elif _ghost_cheaper(t, d, p):
            aa = torch.bmm(a3, a3.transpose(1, 2))
            bb = torch.bmm(b3, b3.transpose(1, 2))
            layer.norm2 = layer.norm2 + (aa * bb).sum((1, 2))
        else:
            layer.norm2 = layer.norm2 + torch.bmm(b3.transpose(1, 2), a3).pow(2).sum((1, 2))
        layer.activation, layer.backprop = a3, b3
    if module.bias is not None and module.bias.requires_grad:
        gb = b3.sum(1)
        layer.per_example[module.bias] = gb
        layer.norm2 = layer.norm2 + gb.pow(2).sum(1)
    return layer


def _linear_sum(layer: _Layer, c: Any) -> dict[Any, Any]:
    a3, b3 = layer.activation, layer.backprop
    cb = (b3 * c[:, None, None]).reshape(-1, b3.shape[-1])
    return {layer.module.weight: cb.t() @ a3.reshape(-1, a3.shape[-1])}


def _conv_ghost_ok(module: Any) -> bool:
    return module.groups == 1 and not isinstance(module.padding, str)


def _conv(module: Any, a: Any, b: Any) -> _Layer:
    import torch
    from opacus.grad_sample.conv import compute_conv_grad_sample
    from opacus.utils.tensor_utils import unfold2d

    n = a.shape[0]
    layer = _Layer(module, torch.zeros(n, device=b.device, dtype=b.dtype))
    w = module.weight
    b3 = b.reshape(n, b.shape[1], -1)
    if w.requires_grad:
        positions, p = b3.shape[2], b3.shape[1]
        d = w[0].numel()
        if n > 0 and _conv_ghost_ok(module) and _ghost_cheaper(positions, d, p):
            u = unfold2d(
                a,
                kernel_size=module.kernel_size,
                padding=module.padding,
                stride=module.stride,
                dilation=module.dilation,
            )  # [n, d, L]
            uu = torch.bmm(u.transpose(1, 2), u)
            bb = torch.bmm(b3.transpose(1, 2), b3)
            layer.norm2 = layer.norm2 + (uu * bb).sum((1, 2))
            layer.activation, layer.backprop = a, b
        else:
            gw = compute_conv_grad_sample(module, [a], b)[w]
            layer.per_example[w] = gw
            layer.norm2 = layer.norm2 + gw.reshape(n, -1).pow(2).sum(1)
    if module.bias is not None and module.bias.requires_grad:
        gb = b3.sum(2)
        layer.per_example[module.bias] = gb
        layer.norm2 = layer.norm2 + gb.pow(2).sum(1)
    return layer


def _conv_sum(layer: _Layer, c: Any) -> dict[Any, Any]:
    from torch.nn.grad import conv2d_weight

    m, a, b = layer.module, layer.activation, layer.backprop
    cb = b * c.reshape(-1, *([1] * (b.dim() - 1)))
    gw = conv2d_weight(
        a, m.weight.shape, cb, stride=m.stride, padding=m.padding, dilation=m.dilation
    )
    return {m.weight: gw}


def _norm_layer(module: Any, a: Any, b: Any) -> _Layer:
    """GroupNorm and LayerNorm: per-example gradients of size [n, C], kept.

    weight: Σ over positions of normalised input × output gradient; bias: Σ of the latter."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    n = a.shape[0]
    if isinstance(module, nn.GroupNorm):
        x_hat = F.group_norm(a, module.num_groups, eps=module.eps)
        gw = (x_hat * b).reshape(n, a.shape[1], -1).sum(2)
        gb = b.reshape(n, a.shape[1], -1).sum(2)
    else:
        x_hat = F.layer_norm(a, module.normalized_shape, eps=module.eps)
        dims = list(range(1, a.dim() - len(module.normalized_shape)))
        gw = (x_hat * b).sum(dims) if dims else x_hat * b
        gb = b.sum(dims) if dims else b
    layer = _Layer(module, torch.zeros(n, device=b.device, dtype=b.dtype))
    for param, g in ((module.weight, gw), (module.bias, gb)):
        if param is not None and param.requires_grad:
            layer.per_example[param] = g
            layer.norm2 = layer.norm2 + g.reshape(n, -1).pow(2).sum(1)
    return layer


def _embedding(module: Any, ids: Any, b: Any) -> _Layer:
    import torch
    from opacus.grad_sample.embedding_norm_sample import compute_embedding_norm_sample

    n = ids.shape[0]
    if module.padding_idx is not None:  # autograd gives the padding row no gradient
        b = b * (ids != module.padding_idx).unsqueeze(-1).to(b.dtype)
    layer = _Layer(module, torch.zeros(n, device=b.device, dtype=b.dtype))
    if n > 0:
        norm = compute_embedding_norm_sample(module, [ids], b)[module.weight]
        layer.norm2 = norm.pow(2)
    layer.activation, layer.backprop = ids, b
    return layer


def _embedding_sum(layer: _Layer, c: Any) -> dict[Any, Any]:
    import torch

    w, ids, b = layer.module.weight, layer.activation, layer.backprop
    cb = (b * c.reshape(-1, *([1] * (b.dim() - 1)))).reshape(-1, b.shape[-1])
    out = torch.zeros(w.shape, device=b.device, dtype=b.dtype)
    return {w: out.index_add_(0, ids.reshape(-1), cb)}


def _rules() -> dict[type, tuple[Callable[..., _Layer], Callable[..., dict[Any, Any]] | None]]:
    from torch import nn

    return {
        nn.Linear: (_linear, _linear_sum),
        nn.Conv2d: (_conv, _conv_sum),
        nn.GroupNorm: (_norm_layer, None),
        nn.LayerNorm: (_norm_layer, None),
        nn.Embedding: (_embedding, _embedding_sum),
    }


def _clipped_sums(
    layers: list[_Layer], max_grad_norm: float, scale: float
) -> tuple[dict[Any, Any], Any]:
    """Each parameter's Σ_i c_i g_i, and the per-example norms, from one pass's layers.

    The layers' ``b`` are the mean loss's output gradients: the per-example gradients of the
    summed loss are ``scale`` (the batch size) times theirs, which is folded into the norms
    and the weights ``scale · c_i`` here rather than multiplied into every ``b``."""
    import torch

    norm = torch.stack([layer.norm2 for layer in layers]).sum(0).clamp(min=0).sqrt() * scale
    c = (max_grad_norm / (norm + _EPS)).clamp(max=1.0)
    weights = c * scale
    rules = _rules()
    sums: dict[Any, Any] = {}
    for layer in layers:
        for param, g in layer.per_example.items():
            sums[param] = torch.einsum("n,n...->...", weights.to(g.dtype), g)
        if layer.activation is not None:
            rule = rules[type(layer.module)][1]
            assert rule is not None  # only rules with a sum keep activations
            sums.update(rule(layer, weights))
    return sums, norm


# --------------------------------------------------------------------------- Opacus pieces


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

        def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
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
            for p in self.params:
                p.bk_clipped = None  # type: ignore[attr-defined]
            super().zero_grad(set_to_none)

    class BKPrivacyEngine(PrivacyEngine):  # type: ignore[misc]
        """PrivacyEngine that, for ``grad_sample_mode="bk"`` only, wraps the model in
        :class:`BKGradSampleModule` and the optimizer in :class:`BKDPOptimizer`."""

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
