"""The run parameters (``params.yaml``): pydantic schema, unknown keys rejected.

``train:`` and ``model:`` belong to training; ``data:`` belongs to :mod:`dpgov.data` and is
passed through untouched here. The embedded defaults ship in ``dpgov/defaults/params.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dpgov import names, yamlio
from dpgov.data.params import DataParams
from dpgov.errors import UsageError
from dpgov.names import MODEL_NAME_MAX
from dpgov.training.models import FACTORY, model_names

DEFAULT_PARAMS = Path("params.yaml")
DEVICES = ("auto", "cpu", "cuda")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelParams(_Strict):
    name: str = Field(
        default="mlp", description="registry key: mlp, logreg, cnn; factory with model.factory"
    )
    hidden: list[int] = Field(default_factory=lambda: [64, 32], description="MLP widths")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    channels: list[int] = Field(default_factory=lambda: [16, 32], description="CNN widths")
    groups: int = Field(default=4, ge=1, description="GroupNorm groups per CNN block (at most)")
    # your own model (dpgov.training.factory, docs/models.md)
    factory: str | None = Field(
        default=None,
        description="'package.module:function' returning a torch module; the policy in force "
        "must allow-list it (release.allowed_model_factories)",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword args of factory")
    batchnorm: Literal["groupnorm", "frozen"] = Field(
        default="groupnorm",
        description="BatchNorm → GroupNorm, or frozen (pretrained statistics, eval mode)",
    )
    head: str | None = Field(
        default=None, description="the factory model's last Linear, replaced by one output"
    )
    weights: str | None = Field(default=None, description="local state-dict file (pretrained)")
    weights_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-fA-F]{64}$", description="required with weights"
    )
    weights_origin: str | None = Field(
        default=None, description="where the weights come from (free text, in the statement)"
    )
    trainable: list[str] | None = Field(
        default=None, description="parameter name prefixes that train; the rest frozen"
    )

    @model_validator(mode="before")
    @classmethod
    def _factory_name(cls, data: Any) -> Any:
        """``model.factory`` given: ``name`` is ``factory`` (another name with it: refused)."""
        if isinstance(data, dict) and data.get("factory") is not None:
            name = data.get("name", "factory")
            if name != "factory":
                raise ValueError(
                    f"model.name {name!r} and model.factory both given: leave name out "
                    "(or name: factory) to use the factory"
                )
            data = {**data, "name": "factory"}
        return data

    @model_validator(mode="after")
    def _factory_keys(self) -> ModelParams:
        own = ("weights", "weights_sha256", "weights_origin", "head", "trainable")
        if self.factory is None:
            if self.name == "factory":
                raise ValueError("model.name factory needs model.factory")
            given = [k for k in own if getattr(self, k) is not None]
            if given or self.kwargs:
                raise ValueError(
                    f"model.{(given or ['kwargs'])[0]} needs model.factory (built-in models "
                    "take no weights, head, trainable or kwargs)"
                )
        if self.weights is not None and self.weights_sha256 is None:
            raise ValueError("model.weights needs model.weights_sha256 (the file's SHA-256)")
        if self.weights is None and self.weights_sha256 is not None:
            raise ValueError("model.weights_sha256 given without model.weights")
        if self.trainable is not None and (not self.trainable or not all(self.trainable)):
            raise ValueError("model.trainable: a non-empty list of parameter name prefixes")
        return self

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in model_names() and value != FACTORY:
            raise ValueError(
                f"unknown model {value!r}; known: {', '.join(model_names())} "
                "(or model.factory for your own)"
            )
        return value

    @field_validator("hidden", "channels")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"every width must be at least 1, found {value}")
        return value


class TrainParams(_Strict):
    data: str | None = Field(
        default=None, description="prepared data folder; None: data/prepared/<data.dataset>"
    )
    blocks: list[str] | None = Field(
        default=None, description="blocks to train on; None = all active"
    )
    target_epsilon: float = Field(default=2.0, gt=0, description="ε of this run alone, at policy δ")
    noise_multiplier: float | None = Field(
        default=None, gt=0, description="fixed σ; None = calibrate σ for target_epsilon"
    )
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch_size: int = Field(default=512, ge=1, description="expected logical batch (Poisson)")
    max_physical_batch_size: int = Field(default=1024, ge=1)
    max_images_per_patient_step: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="patient-level DP-SGD (patients with several records): at most this many "
        "of a sampled patient's images in a step (a uniform subset when it holds more)",
    )
    max_grad_norm: float = Field(default=5.0, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(default=0.2, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    sampling: str = Field(default="poisson", description="only poisson matches the accounting")
    grad_sample_mode: Literal["auto", "bk", "ghost", "hooks"] = "auto"
    precision: Literal["fp32", "amp"] = Field(
        default="fp32",
        description="amp: forward/backward under bfloat16 autocast, per-sample norms, clipping "
        "and noise in float32 (dpgov.training.precision; needs hooks)",
    )
    device: str = "auto"
    world_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes on this node for DP-SGD (Opacus DPDDP, one GPU each on cuda, "
        "gloo CPU processes otherwise), patients sharded by rank; the mechanism is unchanged "
        "(dpgov.training.distributed)",
    )
    seed: int = Field(
        default=0, description="model initialisation and the reference; never the DP noise"
    )
    secure_rng: bool = Field(
        default=False, description="Opacus secure_mode (torchcsprng) for noise and sampling"
    )
    reproducible_noise: bool = Field(
        default=False,
        description="noise and Poisson sampling derived from seed (tests, debugging only)",
    )
    reference: bool = Field(default=True, description="also train a non-private reference")
    membership_attack: bool = Field(
        default=False,
        description="after evaluation, a membership-inference loss attack on the DP model and "
        "the reference, overall and per subgroup (non-private figures; docs/empirical_audit.md)",
    )
    threshold: float | Literal["prevalence"] = Field(
        default="prevalence",
        description="score cut-off for 0/1 predictions; prevalence = the validation split's rate",
    )
    validation_fraction: float = Field(
        default=0.2,
        ge=0.0,
        le=0.5,
        description="training patients held out from DP-SGD for the threshold and model "
        "selection (keyed per patient; 0: none, the threshold from the training patients)",
    )
    min_group_n: int = Field(default=50, ge=1, description="smallest subgroup judged for gaps")
    n_boot: int = Field(default=50, ge=0, description="bootstrap resamples (0 = no intervals)")
    model_name: str = Field(default="dpgov-flchain", min_length=1, description="registered model")
    experiment: str = Field(default="dpgov", min_length=1, description="MLflow experiment")

    @field_validator("sampling")
    @classmethod
    def _poisson_only(cls, value: str) -> str:
        if value != "poisson":
            raise ValueError(
                f"only 'poisson' sampling is allowed, found {value!r}: the privacy accounting "
                "assumes Poisson subsampling, and shuffled or fixed-size batches would make the "
                "reported ε wrong"
            )
        return value

    @model_validator(mode="after")
    def _one_noise_source(self) -> TrainParams:
        if self.secure_rng and self.reproducible_noise:
            raise ValueError(
                "secure_rng and reproducible_noise are both true: a secure generator cannot "
                "be seeded; choose one"
            )
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        base = value.split(":", 1)[0]
        if base not in DEVICES or (":" in value and (base != "cuda" or not _is_index(value))):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0.0 < float(value) < 1.0:
            raise ValueError(f"threshold must lie in (0, 1) or be 'prevalence', found {value}")
        return value


def _is_index(device: str) -> bool:
    return device.split(":", 1)[1].isdigit()


class RunParams(_Strict):
    data: dict[str, Any] | None = Field(
        default=None, description="owned by dpgov.data; passed through"
    )
    train: TrainParams = Field(default_factory=TrainParams)
    model: ModelParams = Field(default_factory=ModelParams)


def prepared_path(params: RunParams) -> Path:
    """``train.data``, else ``data/prepared/<data.dataset>`` (default dataset flchain)."""
    if params.train.data:
        return Path(params.train.data)
    dataset = (params.data or {}).get("dataset") or "flchain"
    return Path("data/prepared") / str(dataset)


def data_params(params: RunParams) -> DataParams:
    """The ``data:`` section as :mod:`dpgov.data` reads it (unknown keys: UsageError)."""
    try:
        return DataParams.model_validate(params.data or {})
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        found = names.quote(e.get("input"))
        raise UsageError(f"params: data.{loc}: {msg} (found {found})") from err


def default_params_path() -> Path:
    """``params.yaml`` in the working directory, else the copy shipped in the package."""
    if DEFAULT_PARAMS.exists():
        return DEFAULT_PARAMS
    return embedded_params_path()


def embedded_params_path() -> Path:
    return Path(__file__).resolve().parents[1] / "defaults" / "params.yaml"


def parse_params(data: Any, *, source: str = "params") -> RunParams:
    """Validate a mapping into :class:`RunParams`; one line naming the key on failure."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping at top level, found {type(data).__name__}")
    try:
        params = RunParams.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = str(e["msg"]).removeprefix("Value error, ")
        found = names.quote(e.get("input"))
        raise UsageError(f"{source}: {where}: {msg} (found {found})") from err
    _check_names(params, source)
    return params


def _check_names(params: RunParams, source: str) -> None:
    """The names a run stores (model, experiment, blocks, dataset) by :mod:`dpgov.names`."""
    train = params.train
    for key, value in (("model_name", train.model_name), ("experiment", train.experiment)):
        names.name(value, argument=f"{source}: train.{key}", max_length=MODEL_NAME_MAX)
    for i, block in enumerate(train.blocks or []):
        names.name(block, argument=f"{source}: train.blocks.{i}")
    dataset = (params.data or {}).get("dataset")
    if dataset is not None:
        names.name(dataset, argument=f"{source}: data.dataset")


def load_params(path: str | Path | None = None) -> RunParams:
    """Read and validate a params YAML file (default ``params.yaml``, else the embedded one)."""
    file = Path(path) if path is not None else default_params_path()
    where = f"params {file}"
    return parse_params(yamlio.load_mapping(file, where=where), source=where)
