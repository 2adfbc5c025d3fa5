"""A generated imaging cohort (nothing real): images in the MedMNIST ``.npz`` layout with a
metadata CSV, several images for some patients, and its data contract.

No real medical image set ships offline (docs/data.md), so ``dpgov demo --images`` and the
tests train on these. The label is a pattern in the pixels (class 1 images carry a bright
square in the middle), so a model learns something in a few steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def write_cohort(
    folder: str | Path,
    *,
    dataset: str = "imaging-demo",
    images_per_patient: int = 4,
    **kw: Any,
) -> tuple[Path, Path, Path]:
    """Write a generated cohort (:func:`make_images`, patients with up to
    ``images_per_patient`` images) and its contract; returns (npz, contract, metadata CSV)."""
    import yaml

    out = Path(folder)
    npz, meta = make_images(
        out / f"{dataset}.npz", metadata=True, images_per_patient=images_per_patient, **kw
    )
    if meta is None:  # make_images writes it whenever metadata=True
        raise RuntimeError("the cohort's metadata CSV was not written")
    contract = out / f"{dataset}.yaml"
    spec = image_contract(dataset, metadata=True, max_records_per_patient=images_per_patient)
    contract.write_text(yaml.safe_dump(spec, sort_keys=False))
    return npz, contract, meta
