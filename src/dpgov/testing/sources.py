"""Small generated datasets for tests and benchmarks: a tabular cohort and MedMNIST-style images.

Nothing here is real patient data. The label depends on the features (tabular) or on a pattern
in the pixels (images), so a model can learn something in a few steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the generated images live in dpgov.data (dpgov demo --images draws its cohort there too)
from dpgov.data.imaging_cohort import image_contract, make_images

__all__ = [
    "image_contract",
    "make_images",
    "make_tabular",
    "tabular_contract",
    "write_images",
    "write_tabular",
    "write_yaml",
]


def make_tabular(
    n_patients: int = 2000,
    *,
    n_blocks: int = 4,
    start_year: int = 2001,
    seed: int = 0,
    missing_rate: float = 0.1,
) -> Any:
    """A cohort: patient_id, year (block), label, sex, age, x1-x3, lab (with missing values)."""
    import numpy as np
    import pandas as pd

    if n_patients < 1 or n_blocks < 1:
        raise ValueError("n_patients and n_blocks must be positive")
    rng = np.random.default_rng(seed)
    age = np.round(rng.uniform(20, 90, n_patients), 1)
    sex = rng.choice(np.array(["F", "M"], dtype=object), n_patients)
    x = rng.normal(size=(n_patients, 3))
    lab = rng.lognormal(0.0, 0.3, n_patients)
    logit = -2.0 + 1.2 * x[:, 0] - 0.8 * x[:, 1] + 0.03 * (age - 55) + 0.4 * (sex == "M")
    label = (rng.random(n_patients) < 1 / (1 + np.exp(-logit))).astype("int64")
    lab[rng.random(n_patients) < missing_rate] = np.nan
    year = start_year + np.sort(rng.integers(0, n_blocks, n_patients))
    return pd.DataFrame(
        {
            "patient_id": pd.Series([f"P{i:07d}" for i in range(n_patients)], dtype=object),
            "year": year.astype("int64"),
            "label": label,
            "sex": pd.Series(sex, dtype=object),
            "age": age,
            "x1": x[:, 0],
            "x2": x[:, 1],
            "x3": x[:, 2],
            "lab": lab,
        }
    )


def tabular_contract(
    dataset: str = "synthetic",
    *,
    min_block: int = 50,
    min_subgroup: int = 10,
    edges: list[int] | None = None,
) -> dict[str, Any]:
    """The contract of :func:`make_tabular`'s table, as a dict (write it with yaml); ``edges``:
    fixed block boundaries over the year (default: a block per year)."""
    block: dict[str, Any] = {"column": "year"}
    if edges is not None:
        block["edges"] = list(edges)
    return {
        "version": 1,
        "dataset": dataset,
        "kind": "tabular",
        "patient_id": "patient_id",
        "label": "label",
        "block": block,
        "sensitive": {"sex": "sex", "age": "age", "age_bands": [40, 60, 75]},
        "features": ["age", "sex", "x1", "x2", "x3", "lab"],
        "columns": {
            "patient_id": {"type": "string"},
            "year": {"type": "integer", "min": 1990, "max": 2100},
            "label": {"type": "integer", "allowed": [0, 1]},
            "sex": {"type": "string", "allowed": ["F", "M"]},
            "age": {"type": "float", "min": 0, "max": 120},
            "x1": {"type": "float", "min": -10, "max": 10},
            "x2": {"type": "float", "min": -10, "max": 10},
            "x3": {"type": "float"},
            "lab": {"type": "float", "min": 0, "nullable": True},
        },
        "minimum": {"patients_per_block": min_block, "patients_per_subgroup": min_subgroup},
    }


def write_yaml(data: dict[str, Any], path: str | Path) -> Path:
    import yaml

    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    return file


def write_tabular(
    folder: str | Path,
    n_patients: int = 2000,
    *,
    fmt: str = "csv",
    dataset: str = "synthetic",
    seed: int = 0,
    **contract_kw: Any,
) -> tuple[Path, Path]:
    """Write :func:`make_tabular` as CSV or Parquet plus its contract; returns both paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    table = make_tabular(n_patients, seed=seed)
    data = out / f"{dataset}.{fmt}"
    if fmt == "csv":
        table.to_csv(data, index=False)
    elif fmt == "parquet":
        table.to_parquet(data, index=False)
    else:
        raise ValueError(f"fmt must be csv or parquet, found {fmt!r}")
    contract = write_yaml(tabular_contract(dataset, **contract_kw), out / f"{dataset}.yaml")
    return data, contract


def write_images(
    folder: str | Path, *, dataset: str = "synthimg", metadata: bool = True, **kw: Any
) -> tuple[Path, Path, Path | None]:
    """Write :func:`make_images` data and its contract; returns (npz, contract, metadata)."""
    out = Path(folder)
    npz, meta = make_images(out / f"{dataset}.npz", metadata=metadata, **kw)
    k = int(kw.get("images_per_patient", 1))
    contract = write_yaml(
        image_contract(dataset, metadata=metadata, max_records_per_patient=k),
        out / f"{dataset}.yaml",
    )
    return npz, contract, meta
