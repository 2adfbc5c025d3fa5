"""Small generated datasets for tests and benchmarks: a tabular cohort and MedMNIST-style images.

Nothing here is real patient data. The label depends on the features (tabular) or on a pattern
in the pixels (images), so a model can learn something in a few steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def make_images(
    path: str | Path,
    *,
    n_train: int = 160,
    n_val: int = 40,
    n_test: int = 80,
    size: int = 28,
    channels: int = 1,
    seed: int = 0,
    metadata: bool = True,
    images_per_patient: int = 1,
) -> tuple[Path, Path | None]:
    """Write images in the MedMNIST ``.npz`` layout (uint8 (N, H, W) or (N, H, W, C); labels
    (N, 1)) and, with ``metadata``, a CSV of split, index, patient_id, sex, age, site.

    Class 1 images carry a bright square in the middle; class 0 images do not. With
    ``images_per_patient`` k > 1 (an imaging cohort: generated, not real), each patient holds
    1..k consecutive images of one split (the first patient of each split k), all with the
    patient's label, sex, age and site; ``n_*`` count images.
    """
    if images_per_patient < 1:
        raise ValueError(f"images_per_patient must be >= 1, found {images_per_patient}")
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {}
    rows = []
    pid = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = (rng.random(n) < 0.4).astype(np.uint8)
        starts = _patient_starts(rng, n, images_per_patient)
        if images_per_patient > 1:  # one label per patient
            labels = labels[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
        shape = (n, size, size) if channels == 1 else (n, size, size, channels)
        imgs = rng.normal(70, 25, shape)
        lo, hi = size // 3, size - size // 3
        imgs[labels == 1, lo:hi, lo:hi] += 110
        arrays[f"{split}_images"] = np.clip(imgs, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None]
        person: dict[str, Any] = {}
        for i in range(n):
            if starts[i]:
                person = {
                    "patient_id": f"IMG{pid:06d}",
                    "sex": "F" if rng.random() < 0.5 else "M",
                    "age": float(np.round(rng.uniform(1, 90), 0)),
                    "site": "site-a" if rng.random() < 0.5 else "site-b",
                }
                pid += 1
            rows.append({"split": split, "index": i, **person})
    np.savez_compressed(file, **arrays)
    meta_path = None
    if metadata:
        meta_path = file.with_name(file.stem + "_metadata.csv")
        pd.DataFrame(rows).to_csv(meta_path, index=False)
    return file, meta_path


def _patient_starts(rng: Any, n: int, k: int) -> Any:
    """A boolean mask of the rows that start a new patient (every row when ``k`` is 1)."""
    import numpy as np

    starts = np.ones(n, dtype=bool)
    if k == 1 or n == 0:
        return starts
    starts[:] = False
    i, first = 0, True
    while i < n:
        starts[i] = True
        i += k if first else int(rng.integers(1, k + 1))
        first = False
    return starts


def image_contract(
    dataset: str = "synthimg",
    *,
    metadata: bool = True,
    min_block: int = 20,
    min_subgroup: int = 5,
    max_records_per_patient: int = 1,
) -> dict[str, Any]:
    """The contract of :func:`make_images` output (with or without its metadata CSV);
    ``max_records_per_patient`` > 1 declares several images per patient."""
    contract: dict[str, Any] = {
        "version": 1,
        "dataset": dataset,
        "kind": "image",
        "label": "label",
        "columns": {"label": {"type": "integer", "allowed": [0, 1]}},
        "minimum": {"patients_per_block": min_block, "patients_per_subgroup": min_subgroup},
    }
    if metadata:
        contract.update(
            patient_id="patient_id",
            block={"column": "site"},
            sensitive={"sex": "sex", "age": "age", "age_bands": [30, 60]},
        )
        contract["columns"].update(
            {
                "patient_id": {"type": "string"},
                "sex": {"type": "string", "allowed": ["F", "M"]},
                "age": {"type": "float", "min": 0, "max": 120},
                "site": {"type": "string", "allowed": ["site-a", "site-b"]},
            }
        )
        if max_records_per_patient > 1:
            contract["privacy"] = {
                "max_records_per_patient": max_records_per_patient,
                "group_privacy": True,
            }
    else:  # no patient ids: the data owner declares each image a different patient
        contract["block"] = {"constant": "all"}
        contract["privacy"] = {"one_record_per_patient": True}
    return contract


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
