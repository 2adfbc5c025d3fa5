"""The ``data:`` section of ``params.yaml`` (DVC parameters of the prepare and validate stages).

Other sections of the file (``train:``, ``model:``, ...) belong to other stages and are ignored
here; unknown keys inside ``data:`` are rejected.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dpgov import names, yamlio
from dpgov.errors import UsageError

PARAMS_FILE = Path("params.yaml")


class DataParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str | None = None  # name of the prepared dataset; default: the contract's
    source: str = "bundled:flchain"  # CSV, Parquet or .npz path, or bundled:flchain
    contract: str | None = None  # contract YAML; default: contracts/flchain.yaml
    metadata: str | None = None  # image metadata CSV (sex, age per image)
    policy: str | None = None  # policy whose δ validation checks; default policies/default.yaml
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    # no effect since block boundaries are fixed by the contract (block.edges): grouping by
    # counts let one patient move other patients' blocks; still read so older params files load
    min_block_patients: int | None = Field(default=None, ge=1)
    horizon_years: float = Field(default=5.0, gt=0, le=12)  # bundled flchain only


def load_params(path: str | Path | None = None) -> DataParams:
    """``data:`` of ``params.yaml`` (``path``, else ./params.yaml when present, else defaults)."""
    from pydantic import ValidationError

    file = Path(path) if path is not None else PARAMS_FILE
    if path is None and not file.is_file():
        return DataParams()
    raw = yamlio.load_mapping(file, where=f"params {file}", empty_ok=True)
    section = raw.get("data") or {}
    if not isinstance(section, dict):
        raise UsageError(f"params {file}: data: expected a mapping")
    try:
        loaded = DataParams.model_validate(section)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        found = names.quote(e.get("input"))
        raise UsageError(f"params {file}: data.{loc}: {msg} (found {found})") from err
    if loaded.dataset is not None:
        names.name(loaded.dataset, argument=f"params {file}: data.dataset")
    return loaded
