"""Data contracts: what a dataset must look like before any privacy budget is spent on it.

A contract is a YAML file (pydantic, unknown keys rejected) naming the columns and their types,
the label, the patient id (the privacy unit), the block column, the sensitive attributes, the
allowed ranges and sets, and the privacy unit's bound. ``docs/data.md`` explains every key.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dpgov import names, yamlio
from dpgov.data.flchain import CONTRACT_YAML
from dpgov.errors import UsageError

ColumnType = Literal["integer", "float", "string", "boolean"]
NUMERIC_TYPES = ("integer", "float")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# a patient id domain: where the ids come from, e.g. "mrn@hospital-a"
_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:/-]{0,127}$")

# Columns that prepare writes itself; a feature with one of these names is renamed.
RESERVED_COLUMNS = ("patient_id", "block", "label", "sex", "age_band", "image_index")
# Columns every image metadata table carries besides those the contract declares.
IMAGE_KEY_COLUMNS = ("split", "index")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One column: its type, whether it may be missing, and the values it may take."""

    type: ColumnType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | float | bool] | None = Field(default=None, min_length=1)
    description: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.type not in NUMERIC_TYPES:
            raise ValueError(f"min/max apply to integer or float columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if (
            self.allowed is not None
            and self.type == "string"
            and any(isinstance(v, bool) for v in self.allowed)
        ):
            raise ValueError(
                "allowed holds a boolean for a string column: quote yes/no/true/false in YAML"
            )
        return self

    def allowed_values(self) -> list[str | int | float | bool] | None:
        """Allowed values in the column's own type (strings stay strings)."""
        if self.allowed is None:
            return None
        if self.type == "string":
            return [str(v) for v in self.allowed]
        return list(self.allowed)


class BlockSpec(_Strict):
    """Which block (unit of budget) each record belongs to. Block boundaries are fixed by the
    contract, never by the data: one patient more or less moves no other patient's block."""

    column: str | None = None  # a column of the table
    constant: str | None = None  # or one block for everything (images without a block column)
    # integer block column: fixed boundaries. edges [e1, ..., ek] cut the values into the blocks
    # v < e1, e1 <= v < e2, ..., v >= ek (named by the values they cover, the column's min/max
    # closing the outer ones when declared: min 1995, max 2003, edges [1996, 1997, 1998] →
    # 1995, 1996, 1997, 1998-2003). Without edges each value is its own block.
    edges: list[int] | None = Field(default=None, min_length=1)
    # refused: grouping adjacent values until each group holds enough training patients made
    # the boundaries depend on the counts (one patient could move them); use edges
    group_adjacent: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> BlockSpec:
        if (self.column is None) == (self.constant is None):
            raise ValueError("give exactly one of block.column or block.constant")
        if self.constant is not None and not _NAME.match(self.constant):
            raise ValueError(f"block.constant {self.constant!r} must be a short plain name")
        if self.group_adjacent:
            raise ValueError(
                "group_adjacent is no longer supported: it moved block boundaries with "
                "the patient counts (one patient could regroup others); declare fixed "
                "boundaries with block.edges: [...] (docs/data.md)"
            )
        if self.edges is not None:
            if self.column is None:
                raise ValueError("block.edges needs block.column")
            if list(self.edges) != sorted(set(self.edges)):
                raise ValueError("block.edges must be strictly increasing")
        return self


class SensitiveSpec(_Strict):
    """Columns holding the sensitive attributes used for subgroup (fairness) evaluation."""

    sex: str | None = None
    age: str | None = None  # age in years; prepared data carries it banded as age_band
    age_bands: list[float] = Field(default=[40, 50, 60, 70, 80], min_length=1)

    @model_validator(mode="after")
    def _sorted(self) -> SensitiveSpec:
        if list(self.age_bands) != sorted(set(self.age_bands)):
            raise ValueError("age_bands must be strictly increasing")
        return self


class PrivacyUnit(_Strict):
    """How many records one patient may contribute. More than one needs group privacy."""

    max_records_per_patient: int = Field(default=1, ge=1, le=1000)
    group_privacy: bool = False
    # image data without a patient id column: the data owner declares that every image is a
    # different patient (prepare cannot check it; validation says it is assumed)
    one_record_per_patient: bool = False

    @model_validator(mode="after")
    def _group(self) -> PrivacyUnit:
        if self.max_records_per_patient > 1 and not self.group_privacy:
            raise ValueError(
                "max_records_per_patient > 1 needs group_privacy: true (record-level DP-SGD "
                "protects a patient only if each patient has one record)"
            )
        if self.one_record_per_patient and self.max_records_per_patient > 1:
            raise ValueError(
                "one_record_per_patient contradicts max_records_per_patient > 1: declare one"
            )
        return self


class ImageTransformSpec(_Strict):
    """What each image goes through (``dpgov.data.image_store``): channels, resize, centre
    crop, normalisation; ``hflip`` is a per-example augmentation in training."""

    channels: Literal[1, 3] = 1
    resize: int | list[int] | None = None  # shorter side, or [H, W]
    center_crop: int | list[int] | None = None
    mean: list[float] = Field(default=[0.0], min_length=1)
    std: list[float] = Field(default=[1.0], min_length=1)
    hflip: bool = False

    @model_validator(mode="after")
    def _sizes(self) -> ImageTransformSpec:
        for key in ("resize", "center_crop"):
            v = getattr(self, key)
            sizes = [v] if isinstance(v, int) else list(v or [])
            if v is not None and (len(sizes) not in (1, 2) or min(sizes) < 1):
                raise ValueError(f"{key} must be a positive size or [height, width]")
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, self.channels):
                raise ValueError(f"{key} needs 1 or {self.channels} values (one per channel)")
        if min(self.std) <= 0:
            raise ValueError("std values must be positive")
        return self


class ImageFilesSpec(_Strict):
    """Images as files listed in a manifest (CSV or Parquet): the column holding each file's
    path (relative to the manifest's folder, or absolute), the sizes allowed, the transform."""

    path: str = "path"
    min_size: int = Field(default=1, ge=1)  # smallest width and height, in pixels
    max_size: int = Field(default=65536, ge=1)
    transform: ImageTransformSpec = ImageTransformSpec()

    @model_validator(mode="after")
    def _range(self) -> ImageFilesSpec:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} is above max_size {self.max_size}")
        return self


class Minimums(_Strict):
    patients_per_block: int = Field(default=100, ge=1)
    patients_per_subgroup: int = Field(default=30, ge=1)


class Contract(_Strict):
    """A data contract. ``columns`` lists every column of the table (tabular) or of the image
    metadata plus the label (image)."""

    version: Literal[1]
    dataset: str
    kind: Literal["tabular", "image"] = "tabular"
    patient_id: str | None = None
    # the namespace the patient ids come from (default: dataset): the pseudonym is keyed on it
    patient_id_domain: str | None = None
    label: str
    positive_labels: list[str | int | float | bool] | None = Field(default=None, min_length=1)
    block: BlockSpec
    sensitive: SensitiveSpec = SensitiveSpec()
    features: list[str] | None = None
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    privacy: PrivacyUnit = PrivacyUnit()
    minimum: Minimums = Minimums()
    images: ImageFilesSpec | None = None  # kind image: a manifest over image files
    allow_extra_columns: bool = False
    description: str | None = None

    @model_validator(mode="after")
    def _cross(self) -> Contract:
        if not _NAME.match(self.dataset):
            raise ValueError(
                f"dataset {self.dataset!r} must be 1-64 letters, digits, '_', '.', '-'"
            )

        if self.patient_id_domain is not None and not _DOMAIN.match(self.patient_id_domain):
            raise ValueError(
                f"patient_id_domain {self.patient_id_domain!r} must be 1-128 letters, digits, "
                "'_', '.', '@', ':', '/', '-'"
            )

        def need(role: str, col: str | None) -> None:
            if col is not None and col not in self.columns:
                raise ValueError(f"{role} column {col!r} is not listed under columns")

        if self.kind == "tabular" and self.patient_id is None:
            raise ValueError("patient_id is required for tabular data")
        if (
            self.kind == "image"
            and self.patient_id is None
            and not self.privacy.one_record_per_patient
        ):
            raise ValueError(
                "image data without a patient id column: name it in patient_id (a metadata "
                "column), or declare privacy.one_record_per_patient: true if every image is a "
                "different patient"
            )
        if self.privacy.one_record_per_patient and self.patient_id is not None:
            raise ValueError(
                "privacy.one_record_per_patient is for image data without a patient id column: "
                "with patient_id, validation checks the records per patient"
            )
        need("patient_id", self.patient_id)
        need("label", self.label)
        need("block", self.block.column)
        need("sensitive.sex", self.sensitive.sex)
        need("sensitive.age", self.sensitive.age)
        label = self.columns[self.label]
        if self.positive_labels is None and label.type not in ("integer", "boolean"):
            raise ValueError(
                f"label column {self.label!r} is {label.type}: declare positive_labels to map "
                "it to 0/1"
            )
        if self.block.edges is not None:
            spec = self.columns[self.block.column or ""]
            if spec.type != "integer":
                raise ValueError("block.edges needs an integer block column")
            lo = -math.inf if spec.min is None else spec.min
            hi = math.inf if spec.max is None else spec.max
            if not all(lo < e <= hi for e in self.block.edges):
                raise ValueError(
                    f"block.edges {list(self.block.edges)} must lie above the block column's "
                    f"min and at most its max: each block must be able to hold a value"
                )
        if self.block.column and self.columns[self.block.column].type not in ("integer", "string"):
            raise ValueError("the block column must be integer or string")
        if self.sensitive.age and self.columns[self.sensitive.age].type not in NUMERIC_TYPES:
            raise ValueError(f"sensitive.age column {self.sensitive.age!r} must be numeric")
        roles = {self.patient_id, self.label, self.block.column} - {None}
        if self.images is not None:
            if self.kind != "image":
                raise ValueError("images: applies to contracts with kind: image")
            need("images.path", self.images.path)
            if self.columns[self.images.path].type != "string":
                raise ValueError(f"images.path column {self.images.path!r} must be a string")
        if self.kind == "image":
            clash = set(IMAGE_KEY_COLUMNS) & set(self.columns)
            if clash:
                raise ValueError(f"image contracts must not list {sorted(clash)}: implied")
            if self.features:
                raise ValueError("image contracts take no features: the pixels are the features")
        for feature in self.features or []:
            need("feature", feature)
            if feature in roles:
                raise ValueError(f"feature {feature!r} is the patient id, label or block column")
        if self.features is not None and len(set(self.features)) != len(self.features):
            raise ValueError("features lists a column twice")
        return self

    @property
    def id_domain(self) -> str:
        """The domain of the patient ids: ``patient_id_domain``, else the contract's
        ``dataset`` (so preparing the source under another dataset name keeps it)."""
        return self.patient_id_domain or self.dataset

    def feature_columns(self) -> list[str]:
        """Feature columns: those listed, else every column not used as id, label or block."""
        if self.kind == "image":
            return []
        if self.features is not None:
            return list(self.features)
        roles = {self.patient_id, self.label, self.block.column}
        return [c for c in self.columns if c not in roles]

    def sensitive_names(self) -> list[str]:
        """Names of the sensitive attributes in prepared data (``sex``, ``age_band``)."""
        out = []
        if self.sensitive.sex:
            out.append("sex")
        if self.sensitive.age:
            out.append("age_band")
        return out

    def required_columns(self) -> list[str]:
        """Columns that must never be missing: id, label, block, sensitive, non-nullable."""
        must = [
            self.patient_id,
            self.label,
            self.block.column,
            self.sensitive.sex,
            self.sensitive.age,
        ]
        out = [c for c in must if c is not None]
        out += [c for c, spec in self.columns.items() if not spec.nullable and c not in out]
        return out


@dataclass(frozen=True)
class LoadedContract:
    contract: Contract
    path: str  # file path, or "builtin:flchain"
    sha256: str  # hash of the YAML bytes


def parse_contract(text: str | bytes, where: str) -> LoadedContract:
    """Validate contract YAML text; ``where`` names it in error messages."""
    from pydantic import ValidationError

    raw = text.encode() if isinstance(text, str) else text
    data = yamlio.parse_mapping(raw, where=f"contract {where}")
    try:
        contract = Contract.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        shown = names.quote(e.get("input"))
        found = "" if e["type"] in ("missing", "value_error") else f" (found {shown})"
        at = f"{loc}: " if loc else ""
        raise UsageError(f"contract {where}: {at}{msg}{found}") from err
    return LoadedContract(contract, where, hashlib.sha256(raw).hexdigest())


def load_contract(path: str | Path | None = None) -> LoadedContract:
    """Read a contract file; ``None`` gives the bundled flchain contract
    (``contracts/flchain.yaml`` in the working directory, else the copy inside dpgov)."""
    if path is None:
        local = Path("contracts/flchain.yaml")
        if local.is_file():
            path = local
        else:
            return parse_contract(CONTRACT_YAML, "builtin:flchain")
    file = Path(path)
    return parse_contract(yamlio.read_bytes(file, where=f"contract {file}"), str(file))
