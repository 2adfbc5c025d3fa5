"""Your own model: ``model.factory: "package.module:function"``, made DP-compatible.

A factory runs code inside the governed process, next to the noise generators and the
ledger's keys, so it is called only when the policy in force allow-lists it
(``release.allowed_model_factories``, shell-style patterns such as
``"monai.networks.nets:*"``); the check comes before the module is imported. What the factory
returns becomes, in this order (:func:`build_from_factory`):

1. **weights** (``model.weights``; weights the factory would fetch itself, through
   :data:`FETCHED_WEIGHTS_KWARGS`, are refused): a local state-dict file, its SHA-256
   checked against ``model.weights_sha256`` before it is read (mismatch: exit 2), loaded with
   ``torch.load(weights_only=True)`` into the factory's model as built (strict keys).
2. **head** (``model.head``): the named ``Linear`` replaced by a fresh one with one output
   (the public pretraining's classes dropped).
3. **BatchNorm** (``model.batchnorm``): its statistics mix the examples of a batch, which
   per-example DP-SGD cannot allow. ``groupnorm``: each BatchNorm replaced by GroupNorm
   (Opacus's own fixer, ``gcd(32, C)`` groups; the statistics and affine parameters are
   discarded). ``frozen``: each BatchNorm replaced by :class:`FrozenBatchNorm`, which applies
   the pretrained running statistics and affine parameters as fixed buffers, always in
   evaluation mode (``model.train()`` cannot switch it back), so it is a per-example function
   and nothing in it trains or updates.
4. **in-place activations** turned off (they break Opacus's backward hooks, opacus#828).
5. **trainable** (``model.trainable``): parameters whose names start with none of the given
   prefixes get ``requires_grad = False``; Opacus then computes, clips and noises only the
   trained ones (public pretraining, private fine-tuning).
6. the model wrapped in :class:`OneLogit` (``[B, 1]`` or ``[B]`` → ``[B]``), checked by
   Opacus's validators (``ModuleValidator`` and ``GradSampleModule.validate``); a module they
   refuse is named, exit 2.

Every change is recorded in a :class:`ModelReport`, attached to the built module
(:func:`report_of`) for the run's output and its MLflow params.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgov.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

BATCHNORM_MODES = ("groupnorm", "frozen")
REPORT_ATTR = "dpgov_model_report"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelReport:
    """What was done to a factory's model to make it trainable under DP (all plain data)."""

    factory: str
    kwargs: dict[str, Any]
    batchnorm: str
    batchnorm_replaced: tuple[str, ...] = ()  # module names, as the factory named them
    inplace_disabled: tuple[str, ...] = ()
    head: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    weights_origin: str | None = None
    trainable: tuple[str, ...] | None = None
    n_trainable: int = 0
    n_frozen: int = 0
    frozen_parameters: tuple[str, ...] = field(default=(), repr=False)

    def params(self) -> dict[str, Any]:
        """MLflow params (``model.*``): values short enough for MLflow's limits."""
        out: dict[str, Any] = {
            "model.factory": self.factory,
            "model.kwargs": self.kwargs,
            "model.batchnorm": self.batchnorm,
            "model.batchnorm_replaced": len(self.batchnorm_replaced),
            "model.head": self.head or "",
            "model.trainable": list(self.trainable) if self.trainable is not None else "all",
            "model.n_trainable_parameters": self.n_trainable,
            "model.n_frozen_parameters": self.n_frozen,
        }
        if self.weights_sha256 is not None:
            out["model.weights_sha256"] = self.weights_sha256
            out["model.weights_origin"] = self.weights_origin or ""
        return out

    def statement(self) -> dict[str, Any]:
        """The privacy statement's ``model`` entry (:func:`model_sentence` says it in words)."""
        weights = None
        if self.weights_sha256 is not None:
            weights = {
                "path": self.weights,
                "sha256": self.weights_sha256,
                "origin": self.weights_origin,
            }
        return {
            "factory": self.factory,
            "kwargs": self.kwargs,
            "batchnorm": self.batchnorm,
            "batchnorm_replaced": len(self.batchnorm_replaced),
            "weights": weights,
            "trainable": list(self.trainable) if self.trainable is not None else None,
            "n_trainable_parameters": self.n_trainable,
            "n_frozen_parameters": self.n_frozen,
        }

    def change_lines(self) -> list[str]:
        """The changes in words, one line each (the run's output)."""
        lines = []
        if self.batchnorm_replaced:
            to = "GroupNorm" if self.batchnorm == "groupnorm" else "frozen BatchNorm (eval mode)"
            names = ", ".join(self.batchnorm_replaced[:4])
            more = len(self.batchnorm_replaced) - 4
            lines.append(
                f"model: {len(self.batchnorm_replaced)} BatchNorm → {to}: {names}"
                + (f" and {more} more" if more > 0 else "")
            )
        if self.inplace_disabled:
            lines.append(f"model: in-place activations turned off in {len(self.inplace_disabled)}")
        if self.head:
            lines.append(f"model: head {self.head!r} replaced by a one-output Linear")
        if self.weights_sha256:
            lines.append(
                f"model: weights {self.weights} sha256 {self.weights_sha256[:12]}… "
                f"(origin: {self.weights_origin or 'not given'})"
            )
        if self.trainable is not None:
            lines.append(
                f"model: trains {self.n_trainable:,} parameters ({', '.join(self.trainable)}), "
                f"{self.n_frozen:,} frozen"
            )
        return lines


def model_sentence(m: dict[str, Any] | None) -> str:
    """The statement's sentence on a factory model and its pretrained weights ("" for a
    built-in model or a statement without one)."""
    if not m or not m.get("factory"):
        return ""
    w = m.get("weights")
    if w:
        weights = (
            f"pretrained weights {w.get('path')} (sha256 {w.get('sha256')}, checked before "
            f"training; origin: {w.get('origin') or 'not given'}), public: their own training "
            "data is not covered by this guarantee"
        )
    else:
        weights = "no pretrained weights"
    trainable = m.get("trainable")
    trains = (
        f"trained parameters under {', '.join(trainable)}, the rest frozen"
        if trainable
        else "all parameters trained"
    )
    return (
        f"Model: {m['factory']} ({m.get('batchnorm')} BatchNorm, "
        f"{m.get('batchnorm_replaced', 0)} replaced), {weights}; {trains}."
    )


def report_of(module: Any) -> ModelReport | None:
    """The :class:`ModelReport` of a module built from a factory (None for built-ins)."""
    report = getattr(module, REPORT_ATTR, None)
    return report if isinstance(report, ModelReport) else None


def allowed(factory: str, patterns: Sequence[str]) -> bool:
    """Whether ``factory`` matches one of the policy's shell-style ``patterns``."""
    return any(fnmatch.fnmatchcase(factory, p) for p in patterns)


def check_allowed(factory: str, patterns: Sequence[str] | None) -> None:
    """Refuse (exit 2) a factory the policy in force does not allow-list, before any import.
    The function part must be one public name (checked here too, so that a pattern ending in
    ``*`` never admits an attribute chain)."""
    _, _, attr = factory.partition(":")
    if not attr.isidentifier() or attr.startswith("_"):
        raise UsageError(
            f"model.factory: expected 'package.module:function' with one public function "
            f"name, found {factory!r}"
        )
    if patterns is not None and allowed(factory, patterns):
        return
    listed = ", ".join(patterns or ()) or "none"
    raise UsageError(
        f"model.factory: {factory!r} is not allowed by the policy in force "
        f"(release.allowed_model_factories: {listed}); a factory runs code inside the "
        "governed process, so the policy must list it"
    )


def resolve(factory: str) -> Callable[..., Any]:
    """``"package.module:function"`` → the callable (exit 2 if it does not import)."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"model.factory: expected 'package.module:function', found {factory!r}")
    if not attr.isidentifier() or attr.startswith("_"):
        # one public name of the module: no attribute chains (``mod:os.system`` would reach
        # past what an allow-list pattern such as ``mod:*`` means to admit)
        raise UsageError(
            f"model.factory: {attr!r} is not one public function name of {module_name!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or a broken package failing at import
        raise UsageError(
            f"model.factory: module {module_name!r} does not import ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no message'})"
        ) from err
    target = getattr(module, attr, None)
    if target is None:
        raise UsageError(f"model.factory: {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise UsageError(f"model.factory: {factory!r} is not callable")
    return target  # type: ignore[no-any-return]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights(path: str, expected: str | None) -> str:
    """The file's SHA-256, which must equal ``expected`` (exit 2 otherwise, or if unreadable)."""
    file = Path(path)
    if not expected:
        raise UsageError("model.weights_sha256: required with model.weights")
    if not file.is_file():
        raise UsageError(f"model.weights: {path!r} is not a readable file")
    actual = sha256_of(file)
    if actual != expected.lower():
        raise UsageError(
            f"model.weights: sha256 of {path!r} is {actual}, not model.weights_sha256 {expected}"
        )
    return actual


FETCHED_WEIGHTS_KWARGS = ("pretrained", "weights", "pretrained_weights", "checkpoint_path")


def _refuse_fetched_weights(kwargs: dict[str, Any]) -> None:
    """Weights the factory would fetch or read itself (torchvision's ``weights=``, MONAI's and
    timm's ``pretrained=True``) bypass the SHA-256 check: refused, pointing to model.weights."""
    for key in FETCHED_WEIGHTS_KWARGS:
        value = kwargs.get(key)
        if value not in (None, False, "", 0):
            raise UsageError(
                f"model.kwargs.{key}: {value!r} would have the factory load weights dpgov does "
                "not check; give them as model.weights with model.weights_sha256"
            )


def _load_weights(net: nn.Module, path: str) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(
            f"model.weights: {path!r} is not a state dict torch.load(weights_only=True) reads "
            f"({type(err).__name__})"
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(
            f"model.weights: {path!r} holds a {type(state).__name__}, not a state dict"
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UsageError(
            f"model.weights: {path!r} does not fit the factory's model ({first[:200]})"
        ) from err


def _get(root: nn.Module, name: str) -> nn.Module:
    try:
        return root.get_submodule(name)
    except AttributeError as err:
        raise UsageError(f"model.head: the model has no module {name!r}") from err


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _replace_head(net: nn.Module, name: str) -> None:
    from torch import nn

    old = _get(net, name)
    if not isinstance(old, nn.Linear):
        raise UsageError(f"model.head: {name!r} is a {type(old).__name__}, not a Linear layer")
    _set(net, name, nn.Linear(old.in_features, 1, bias=old.bias is not None))


def _frozen_batchnorm_class() -> type:
    from torch import nn
    from torch.nn import functional

    class FrozenBatchNorm(nn.Module):
        """BatchNorm with fixed (pretrained) statistics and affine parameters, as buffers.

        ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel,
        always; ``train()`` does not change it. A function of one example alone, with
        nothing to train and nothing that updates."""

        running_mean: torch.Tensor
        running_var: torch.Tensor
        weight: torch.Tensor
        bias: torch.Tensor

        def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
            super().__init__()
            c = bn.num_features
            mean = bn.running_mean if bn.running_mean is not None else None
            var = bn.running_var if bn.running_var is not None else None
            self.num_features = c
            self.eps = bn.eps
            self.register_buffer("running_mean", (mean if mean is not None else _zeros(c)).clone())
            self.register_buffer("running_var", (var if var is not None else _ones(c)).clone())
            w = bn.weight.detach() if bn.weight is not None else _ones(c)
            b = bn.bias.detach() if bn.bias is not None else _zeros(c)
            self.register_buffer("weight", w.clone())
            self.register_buffer("bias", b.clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return functional.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                training=False,
                eps=self.eps,
            )

        def extra_repr(self) -> str:
            return f"{self.num_features}, eps={self.eps}, frozen"

    return FrozenBatchNorm


def _owned_output_class() -> type:
    from torch import nn

    class OwnedOutput(nn.Module):
        """A layer whose output is returned as a fresh tensor. Opacus's backward hooks hand a
        hooked layer's output on as a view, and residual code such as ``out = self.bn2(out);
        out += identity`` (torchvision's and MONAI's ResNets) may not modify that in place."""

        def __init__(self, norm: nn.Module) -> None:
            super().__init__()
            self.norm = norm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.norm(x)
            return out.clone()

    return OwnedOutput


def _zeros(c: int) -> torch.Tensor:
    import torch

    return torch.zeros(c)


def _ones(c: int) -> torch.Tensor:
    import torch

    return torch.ones(c)


def _fix_batchnorm(net: nn.Module, mode: str) -> tuple[str, ...]:
    """Replace every BatchNorm (trainable or not: frozen ones would still mix the batch in
    training mode) by GroupNorm or :class:`FrozenBatchNorm`; the names replaced."""
    from opacus.validators.batch_norm import fix as opacus_groupnorm
    from torch import nn

    frozen_cls = _frozen_batchnorm_class()
    owned_cls = _owned_output_class()
    names = [
        n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and n
    ]
    for name in names:
        bn = net.get_submodule(name)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        new = owned_cls(opacus_groupnorm(bn)) if mode == "groupnorm" else frozen_cls(bn)
        _set(net, name, new)
    return tuple(names)


def _disable_inplace(net: nn.Module) -> tuple[str, ...]:
    names = []
    for name, m in net.named_modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False  # type: ignore[assignment]
            names.append(name)
    return tuple(names)


def _apply_trainable(net: nn.Module, prefixes: Sequence[str] | None) -> tuple[int, int, tuple]:
    """Freeze parameters outside ``prefixes``; (trained count, frozen count, frozen names)."""
    named = list(net.named_parameters())
    if prefixes is not None:
        for p in prefixes:
            if not any(_under(n, p) for n, _ in named):
                raise UsageError(
                    f"model.trainable: no parameter name starts with {p!r} (first names: "
                    f"{', '.join(n for n, _ in named[:4])})"
                )
        for n, param in named:
            if not any(_under(n, p) for p in prefixes):
                param.requires_grad_(False)
    trained = sum(p.numel() for _, p in named if p.requires_grad)
    frozen_names = tuple(n for n, p in named if not p.requires_grad)
    frozen = sum(p.numel() for _, p in named if not p.requires_grad)
    if trained == 0:
        raise UsageError("model.trainable: no parameter is left to train")
    return trained, frozen, frozen_names


def _under(name: str, prefix: str) -> bool:
    """``name`` equals ``prefix`` or lies under it (``layer4`` covers ``layer4.0.conv1.weight``,
    not ``layer40``); a prefix ending in ``.`` matches as written."""
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


def _one_logit_class() -> type:
    from torch import nn

    class OneLogit(nn.Module):
        """A factory's model with one logit per example: ``[B, 1]`` or ``[B]`` → ``[B]``."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x)
            if isinstance(out, tuple | list):
                out = out[0]
            if out.dim() == 2 and out.shape[1] == 1:
                return out[:, 0]
            if out.dim() == 1:
                return out
            raise UsageError(
                f"model: the factory's model gives outputs of shape {list(out.shape)}, not one "
                "logit per example; set model.head to its last Linear layer, or pass the "
                "factory's own one-output option in model.kwargs"
            )

    return OneLogit


def check_private(net: nn.Module) -> None:
    """Opacus's validators over every trained module; the first one refused is named."""
    from opacus.grad_sample import GradSampleModule
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    was_training = net.training
    net.train()
    try:
        for name, sub in trainable_modules(net):
            validator = ModuleValidator.VALIDATORS.get(type(sub))
            errors = list(validator(sub)) if validator is not None else []
            if not errors and list(sub.buffers(recurse=False)):
                errors = GradSampleModule.validate(sub, strict=False)
            if errors:
                first = str(errors[0]).splitlines()[0][:160]
                raise UsageError(
                    f"model: Opacus cannot make module {name!r} ({type(sub).__name__}) "
                    f"private: {first}"
                )
    finally:
        net.train(was_training)


def build_from_factory(cfg: Any, spec: Any, *, allowed_patterns: Sequence[str] | None) -> Any:
    """The factory's model (``cfg``: :class:`~dpgov.training.params.ModelParams`), made
    DP-compatible as the module docstring says, with its :class:`ModelReport` attached."""
    factory = str(cfg.factory)
    check_allowed(factory, allowed_patterns)  # before the import: importing runs code too
    weights_sha = check_weights(cfg.weights, cfg.weights_sha256) if cfg.weights else None
    kwargs = dict(cfg.kwargs)
    _refuse_fetched_weights(kwargs)
    fn = resolve(factory)
    try:
        net = fn(**kwargs)
    except TypeError as err:
        raise UsageError(f"model.kwargs: {factory} rejected them: {err}") from err
    from torch import nn

    if not isinstance(net, nn.Module):
        raise UsageError(f"model.factory: {factory} returned a {type(net).__name__}, not a module")
    if cfg.weights:
        _load_weights(net, cfg.weights)
    if cfg.head:
        _replace_head(net, cfg.head)
    replaced = _fix_batchnorm(net, cfg.batchnorm)
    inplace = _disable_inplace(net)
    n_trained, n_frozen, frozen_names = _apply_trainable(net, cfg.trainable)
    model = _one_logit_class()(net)
    check_private(model)
    if spec is not None and getattr(spec, "image_shape", None) is not None:
        _check_forward(model, spec.image_shape)
    report = ModelReport(
        factory=factory,
        kwargs=kwargs,
        batchnorm=cfg.batchnorm,
        batchnorm_replaced=replaced,
        inplace_disabled=inplace,
        head=cfg.head,
        weights=cfg.weights,
        weights_sha256=weights_sha,
        weights_origin=cfg.weights_origin,
        trainable=tuple(cfg.trainable) if cfg.trainable is not None else None,
        n_trainable=n_trained,
        n_frozen=n_frozen,
        frozen_parameters=frozen_names,
    )
    object.__setattr__(model, REPORT_ATTR, report)
    return model


def _check_forward(model: nn.Module, shape: tuple[int, int, int]) -> None:
    """One forward pass on two blank examples: the shapes fit and one logit comes out each."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape)))
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(
            f"model: the factory's model does not take images of shape {list(shape)} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})"
        ) from err
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2,) or not bool(torch.isfinite(out).all()):
        raise UsageError(f"model: expected one finite logit per example, got {list(out.shape)}")
    _check_dp_backward(model, shape)


def _check_dp_backward(model: nn.Module, shape: tuple[int, int, int]) -> None:
    """One backward pass under Opacus's per-sample hooks on two blank examples (what the
    validators cannot see: forward code that breaks the hooks, e.g. in-place ops on a hooked
    layer's output); the hooks are removed afterwards."""
    import torch
    from opacus.grad_sample import GradSampleModule

    was_training = model.training
    gsm = GradSampleModule(model)
    try:
        gsm.train()
        with warnings.catch_warnings():  # blank inputs need no grad: the hook says so
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            gsm(torch.zeros((2, *shape))).sum().backward()
    except Exception as err:
        raise UsageError(
            "model: Opacus cannot compute per-example gradients of the factory's model "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})"
        ) from err
    finally:
        gsm._close()
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            if hasattr(p, "grad_sample"):
                p.grad_sample = None
        model.train(was_training)
