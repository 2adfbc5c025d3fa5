"""Book-keeping per-sample clipping: DP-SGD's clipped sum in one backward pass (issue 21).

Bu, Wang, Zha and Karypis, "Differentially Private Optimization on Large Model at Small Cost"
(ICML 2023, arXiv:2210.00038), Algorithm 1 ("BK"). Opacus's hooks mode materialises every
per-example gradient; its ghost clipping computes only their norms but then runs a second
backward pass with the loss reweighted by the clip factors. Book-keeping needs neither: during
the one backward pass each supported layer's input activations ``a`` (forward hook) and output
gradients ``b`` (a hook on the output tensor) are kept, each example's squared gradient norm
for the layer is computed from them, and when the pass ends (a callback queued on autograd's
engine, ``Variable._execution_engine.queue_callback``, as torch's own DDP does) the clip
factors ``c_i = min(1, C / (‖g_i‖ + 1e-6))`` (Opacus's formula) give each parameter's clipped
sum ``Σ_i c_i g_i`` directly: for a Linear layer ``bᵀ diag(c) a``, for a convolution the
weight gradient of ``diag(c) b`` against ``a``, for an embedding an index-add of ``c_i b_i``.

Per layer, a norm is computed the cheaper of two ways (the paper's layer-wise choice): the
ghost norm ``Σ_{s,t} (a_s·a_t)(b_s·b_t)`` over the ``T`` positions of one example (``T``
tokens of a Linear, ``L`` output pixels of a convolution) costs ``T²(d+p)`` against
``T·d·p`` for the per-example gradient; for a 2-D Linear (``T = 1``) it is ``‖a‖²·‖b‖²``.
GroupNorm, LayerNorm and biases have small per-example gradients, which are kept instead.

What stays Opacus's: the privacy engine, the Poisson sampling, the noise (``N(0, σ²C²)`` from
the same generator, ``DPOptimizer.add_noise``), the scaling and the accountant's hook.
:mod:`dpgov.training.bk_opacus` holds the subclasses that plug this in for
``grad_sample_mode="bk"`` (every other mode is Opacus's unchanged). Two costs of ordinary
training are avoided besides the second pass: the weights of hooked layers do not require grad
while the graph is built, so autograd computes no unclipped weight gradient that would be
thrown away; and the batch-size factor of a mean loss is folded into the clip weights. The
tests compare the clipped sum with Opacus's hooks mode per layer type
(``tests/unit/training/test_bk_clipping.py``).

Not supported (``auto`` then keeps ghost or hooks): a layer of another type with trainable
weights, a module called twice in one forward or a parameter shared by two layers (the cross
terms of tied weights), Conv2d with a padding mode other than zeros, Embedding with
``max_norm``, ``scale_grad_by_freq`` or ``sparse``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
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
            layer.norm2 = layer.norm2 + gw.reshape(n, -1).pow(2).sum(1)
            if gw.numel() <= a.numel() + b.numel() or isinstance(module.padding, str):
                layer.per_example[w] = gw
            else:  # the sum from a and b later: less memory than n weight-sized gradients
                layer.activation, layer.backprop = a, b
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
        a,
        m.weight.shape,
        cb,
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=m.groups,
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
