"""A manifest over image files (CSV or Parquet: one row per image, with its path, patient id,
label, block and sensitive columns, named by the contract's ``images.path`` and roles).

Reading a manifest (:func:`manifest_images`) resolves every path (relative to the manifest's
folder, or absolute), hashes every file and decodes it once: a missing, unreadable or
undecodable file, or more images for one patient than the contract's
``privacy.max_records_per_patient``, is one :class:`~dpgov.errors.UsageError` line (exit 2)
before anything is registered or charged. Sizes outside the contract's ``images.min_size`` /
``max_size`` are readable data breaking the contract: validation reports them (exit 1).

Prepared data keeps a **content-addressed copy** of each image (:func:`prepared_images`):
``images/<sha256[:2]>/<sha256><suffix>`` inside the prepared folder, named in the
``image_file`` column. The copy makes DVC's data version cover the pixels (a path outside the
folder could change under the same version), keeps source paths (which often hold patient
ids or names) out of prepared data, and stores an image listed twice once.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpgov.data.contract import Contract
from dpgov.data.image_store import IMAGE_FILE_SUFFIXES, Transform, open_image
from dpgov.errors import UsageError

IMAGE_DIR = "images"
IMAGE_COLUMN = "image_file"
STORAGE = "files"


@dataclass(frozen=True)
class ManifestImages:
    """The manifest's image files, row by row (aligned with the source frame)."""

    paths: list[Path]
    sha256: list[str]
    heights: list[int]
    widths: list[int]
    digest: str  # SHA-256 over the manifest's bytes and every file's SHA-256, in row order


def transform_of(c: Contract) -> Transform:
    assert c.images is not None
    t = c.images.transform

    def pair(v: Any) -> tuple[int, ...] | None:
        if v is None:
            return None
        return (int(v), int(v)) if isinstance(v, int) else tuple(int(s) for s in v)

    resize = None if t.resize is None else ((t.resize,) if isinstance(t.resize, int) else None)
    crop = pair(t.center_crop)
    return Transform(
        channels=int(t.channels),
        resize=resize or pair(t.resize),
        center_crop=(crop[0], crop[-1]) if crop else None,
        mean=tuple(t.mean) * (t.channels if len(t.mean) == 1 else 1),
        std=tuple(t.std) * (t.channels if len(t.std) == 1 else 1),
        hflip=t.hflip,
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_images(frame: Any, manifest: Path, c: Contract, *, row_offset: int) -> ManifestImages:
    """Resolve, hash and decode every image the manifest lists (module docstring)."""
    assert c.images is not None
    rows = "line" if row_offset == 2 else "row"
    col = c.images.path
    where = f"data {manifest}"
    if c.patient_id is not None and c.patient_id in frame.columns:
        counts = frame[c.patient_id].value_counts()
        bound = c.privacy.max_records_per_patient
        if len(counts) and int(counts.max()) > bound:
            worst = int(counts.max())
            first = int((frame[c.patient_id] == counts.index[0]).to_numpy().nonzero()[0][0])
            over = int((counts > bound).sum())
            raise UsageError(
                f"{where}: a patient has {worst} images ({rows} {first + row_offset}; {over} "
                f"patient{'s' if over != 1 else ''} over the bound) but the contract allows "
                f"{bound} per patient at image level (privacy.max_records_per_patient)"
            )
    base = manifest.parent
    paths: list[Path] = []
    shas: list[str] = []
    heights: list[int] = []
    widths: list[int] = []
    digest = hashlib.sha256(Path(manifest).read_bytes())
    for i, value in enumerate(frame[col].tolist()):
        at = f"{where}: {rows} {i + row_offset}"
        if value is None or not str(value).strip():
            raise UsageError(f"{at}: column {col!r} (image path) is empty")
        path = Path(str(value).strip())
        path = path if path.is_absolute() else base / path
        if path.suffix.lower() not in IMAGE_FILE_SUFFIXES:
            raise UsageError(
                f"{at}: image {value}: unsupported type {path.suffix or '(none)'!r}; use "
                f"{', '.join(IMAGE_FILE_SUFFIXES)}"
            )
        if not path.is_file():
            raise UsageError(f"{at}: image {value}: no such file")
        try:
            sha = file_sha256(path)
            im = open_image(path)
        except OSError as err:
            raise UsageError(f"{at}: image {value}: cannot read ({err.strerror or err})") from err
        except UsageError as err:
            raise UsageError(f"{at}: {err}") from err
        paths.append(path)
        shas.append(sha)
        widths.append(int(im.width))
        heights.append(int(im.height))
        digest.update(sha.encode())
    return ManifestImages(paths, shas, heights, widths, digest.hexdigest())


def address(sha256: str, suffix: str) -> str:
    """The content address of an image inside the prepared folder."""
    return f"{IMAGE_DIR}/{sha256[:2]}/{sha256}{suffix.lower()}"


def prepared_images(
    images: ManifestImages, c: Contract, where: str
) -> tuple[list[str], dict[str, Path], list[int], dict[str, Any]]:
    """Each row's ``image_file``, the copies to write (address → source file), the image shape
    [C, H, W] after the transform, and meta.json's ``images`` entry. Images whose shapes differ
    after the transform (no centre crop, other aspect ratios) are refused: give center_crop."""
    t = transform_of(c)
    shapes = {t.output_shape(h, w) for h, w in zip(images.heights, images.widths, strict=True)}
    if len(shapes) > 1:
        found = ", ".join(str(list(s)) for s in sorted(shapes)[:3])
        raise UsageError(
            f"data {where}: images differ in shape after the transform ({found}): declare "
            "images.transform.center_crop (and resize) so every image has one shape"
        )
    files = [address(s, p.suffix) for s, p in zip(images.sha256, images.paths, strict=True)]
    copies = dict(zip(files, images.paths, strict=True))
    meta = {
        "storage": STORAGE,
        "column": IMAGE_COLUMN,
        "transform": t.to_dict(),
        "min_size": c.images.min_size if c.images else None,
        "max_size": c.images.max_size if c.images else None,
        "note": f"features(split) = transform(decode(<folder>/{IMAGE_COLUMN})), read per batch; "
        f"files are named by their SHA-256",
    }
    return files, copies, list(next(iter(shapes))), meta


def copy_images(folder: Path, copies: dict[str, Path]) -> None:
    """Copy each image to its content address under ``folder`` (a plain copy, never a link:
    editing the source later must not change prepared data under its version)."""
    for rel, src in sorted(copies.items()):
        target = folder / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
