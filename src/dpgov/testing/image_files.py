"""A generated folder of image files with a manifest, for tests and benchmarks (no real data).

Patients have one or more images (``images_per_patient`` cycles through its values); class 1
images carry a bright square in the middle, class 0 images do not. PNG through Pillow; DICOM
(uncompressed, 16-bit MONOCHROME2) through pydicom when it is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MANIFEST_CONTRACT = """\
version: 1
dataset: {dataset}
kind: image
patient_id: patient_id
label: label
block:
  column: site
sensitive:
  sex: sex
  age: age
  age_bands: [50]
columns:
  path: {{type: string}}
  patient_id: {{type: string}}
  label: {{type: integer, allowed: [0, 1]}}
  sex: {{type: string, allowed: [F, M]}}
  age: {{type: float, min: 0, max: 120}}
  site: {{type: string}}
privacy:
  max_records_per_patient: {max_records}
  group_privacy: {group}
minimum:
  patients_per_block: 1
  patients_per_subgroup: 1
images:
  path: path
  min_size: {min_size}
  max_size: 4096
  transform:
    channels: 1
    resize: {size}
    center_crop: {size}
    mean: [0.5]
    std: [0.25]
"""


def manifest_contract(
    dataset: str = "scans",
    *,
    size: int = 16,
    max_records: int = 3,
    min_size: int = 8,
) -> str:
    return MANIFEST_CONTRACT.format(
        dataset=dataset,
        size=size,
        max_records=max_records,
        group="true" if max_records > 1 else "false",
        min_size=min_size,
    )


def _pixels(rng: Any, label: int, size: int) -> Any:
    import numpy as np

    img = rng.normal(70, 25, (size, size))
    lo, hi = size // 3, size - size // 3
    if label:
        img[lo:hi, lo:hi] += 110
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dicom(path: Path, pixels: Any) -> None:
    """An uncompressed 16-bit MONOCHROME2 DICOM file of ``pixels`` (uint8 values, widened)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    arr = (np.asarray(pixels, dtype=np.uint16) * 16).astype(np.uint16)  # 12-bit range
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_image_folder(
    folder: str | Path,
    *,
    n_patients: int = 24,
    images_per_patient: tuple[int, ...] = (1, 2, 1, 3),
    size: int = 16,
    fmt: str = "png",
    seed: int = 0,
    sites: tuple[str, ...] = ("site-a", "site-b"),
) -> Any:
    """Write images under ``folder/images/`` and return the manifest (a DataFrame of path
    (relative to ``folder``), patient_id, label, sex, age, site). ``fmt``: png, jpeg or dcm."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = p % 2  # a patient's label holds for all their images
        sex = "F" if (p // 2) % 2 else "M"
        age = float(30 + (p * 7) % 60)
        site = sites[p % len(sites)]
        for k in range(images_per_patient[p % len(images_per_patient)]):
            rel = f"images/p{p:04d}_{k}.{fmt}"
            pixels = _pixels(rng, label, size)
            if fmt == "dcm":
                write_dicom(root / rel, pixels)
            else:
                Image.fromarray(pixels, mode="L").save(root / rel)
            rows.append(
                {
                    "path": rel,
                    "patient_id": f"P{p:04d}",
                    "label": label,
                    "sex": sex,
                    "age": age,
                    "site": site,
                }
            )
    return pd.DataFrame(rows)
