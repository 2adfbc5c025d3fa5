"""Models chosen by name in ``params.yaml`` (``model.name``): a registry, not an if-chain.

``model.name: factory`` (set by giving ``model.factory``) builds your own model through
:mod:`dpgov.training.factory`, only when the policy in force allow-lists the factory.

Every model maps an input batch to one logit per example (shape ``[B]``); the loss is
binary cross-entropy with logits. All of them are Opacus-compatible as built: no BatchNorm
(GroupNorm instead, whose statistics are per example), no in-place activations (they break
Opacus's backward hooks, pytorch/opacus#828).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dpgov.errors import UsageError
from dpgov.training.factory import build_from_factory

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """What the data looks like to a model: ``kind`` "tabular" (``n_features``) or "image"."""

    kind: str
    n_features: int
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) for images


ModelFactory = Callable[[InputSpec, Any], "nn.Module"]


def _tabular_only(name: str, spec: InputSpec) -> None:
    if spec.kind != "tabular":
        raise UsageError(
            f"model.name {name!r} needs tabular data; the prepared data is {spec.kind!r} "
            f"(use model.name: cnn for images)"
        )


def _mlp(spec: InputSpec, cfg: Any) -> nn.Module:
    from torch import nn

    _tabular_only("mlp", spec)
    layers: list[nn.Module] = []
    width = spec.n_features
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=False)]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    layers.append(nn.Linear(width, 1))
    layers.append(nn.Flatten(start_dim=0))
    return nn.Sequential(*layers)


def _logreg(spec: InputSpec, cfg: Any) -> nn.Module:
    from torch import nn

    _tabular_only("logreg", spec)
    return nn.Sequential(nn.Linear(spec.n_features, 1), nn.Flatten(start_dim=0))


def _cnn(spec: InputSpec, cfg: Any) -> nn.Module:
    """Conv → GroupNorm → ReLU blocks with 2×2 pooling, global average pooling, linear head."""
    from torch import nn

    if spec.kind != "image" or spec.image_shape is None:
        raise UsageError(
            f"model.name 'cnn' needs image data (meta.json image_shape); the prepared data is "
            f"{spec.kind!r} (use model.name: mlp or logreg)"
        )
    channels_in = spec.image_shape[0]
    layers: list[nn.Module] = []
    for width in cfg.channels:
        groups = _groups_for(width, cfg.groups)
        layers += [
            nn.Conv2d(channels_in, width, kernel_size=3, padding=1),
            nn.GroupNorm(groups, width),
            nn.ReLU(inplace=False),
            nn.AvgPool2d(2, ceil_mode=True),
        ]
        channels_in = width
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels_in, 1),
        nn.Flatten(start_dim=0),
    ]
    return nn.Sequential(*layers)


def _groups_for(width: int, wanted: int) -> int:
    """The largest divisor of ``width`` not above ``wanted`` (GroupNorm needs one)."""
    for g in range(min(wanted, width), 0, -1):
        if width % g == 0:
            return g
    return 1


FACTORY = "factory"  # model.name of a model.factory model

MODELS: dict[str, ModelFactory] = {
    "mlp": _mlp,
    "logreg": _logreg,
    "cnn": _cnn,
}
IMAGE_MODELS = ("cnn", FACTORY)  # the models that take image data


def model_names() -> list[str]:
    """The built-in models (``factory`` is given by ``model.factory``, not by name)."""
    return sorted(MODELS)


def takes_images(name: str) -> bool:
    return name in IMAGE_MODELS


def build_model(
    cfg: Any, spec: InputSpec, *, allowed_factories: Sequence[str] | None = None
) -> nn.Module:
    """Build the model named by ``cfg.name`` (a :class:`ModelParams`) for inputs ``spec``.

    ``allowed_factories``: the policy in force's ``release.allowed_model_factories``; a
    ``model.factory`` model is refused (exit 2) unless it matches one of them."""
    if cfg.name == FACTORY:
        model: nn.Module = build_from_factory(cfg, spec, allowed_patterns=allowed_factories)
        return model
    try:
        factory = MODELS[cfg.name]
    except KeyError:
        raise UsageError(
            f"model.name: unknown model {cfg.name!r}; known: {', '.join(model_names())}"
        ) from None
    return factory(spec, cfg)


def input_spec(meta: dict[str, Any]) -> InputSpec:
    """The :class:`InputSpec` of prepared data from its ``meta.json`` contents."""
    kind = meta.get("kind", "tabular")
    shape = meta.get("image_shape")
    if kind == "image":
        if not shape or len(shape) != 3:
            raise UsageError(f"meta.json: image data needs image_shape [C, H, W], found {shape!r}")
        c, h, w = (int(v) for v in shape)
        return InputSpec(kind="image", n_features=c * h * w, image_shape=(c, h, w))
    features: Sequence[str] = meta.get("features") or []
    if not features:
        raise UsageError("meta.json: features is empty: nothing to train on")
    return InputSpec(kind="tabular", n_features=len(features))
