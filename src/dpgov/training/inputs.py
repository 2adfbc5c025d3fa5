"""What a run trains and evaluates on: prepared data as arrays per split.

:func:`load_data` reads a prepared folder (through :mod:`dpgov.data`) with its data version;
:func:`arrays` turns one split into model inputs with the columns accounting (patient ids,
blocks) and evaluation (sensitive attributes) need. Any object with ``meta``, ``train``,
``test``, ``features(split)`` and ``labels(split)`` fits (:class:`PreparedLike`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dpgov import data as data_module
from dpgov.data.image_store import DiskImages
from dpgov.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


class PreparedLike(Protocol):
    """What training reads from prepared data (``dpgov.data.PreparedData`` fits)."""

    meta: dict[str, Any]
    train: pd.DataFrame
    test: pd.DataFrame

    def features(self, split: str) -> np.ndarray: ...

    def labels(self, split: str) -> np.ndarray: ...


@dataclass
class Arrays:
    """Model inputs for one split, with the columns evaluation and accounting need."""

    x: np.ndarray
    y: np.ndarray
    patient_id: np.ndarray
    block: np.ndarray
    sensitive: pd.DataFrame


def arrays(data: PreparedLike, split: str) -> Arrays:
    """Features (reshaped to [N, C, H, W] for images), labels, ids, blocks, sensitive columns."""
    meta = data.meta
    frame = data.train if split == "train" else data.test
    feats = data.features(split)
    lazy = isinstance(feats, DiskImages)  # image files, read per batch from disk
    x = feats if lazy else np.asarray(feats, dtype=np.float32)
    if meta.get("kind") == "image" and not lazy:
        shape = meta.get("image_shape")
        if not shape:
            raise UsageError("meta.json: image data needs image_shape [C, H, W]")
        x = x.reshape((len(x), *[int(s) for s in shape]))
    y = np.asarray(data.labels(split))
    if len(y) and not np.isin(np.unique(y), [0, 1]).all():
        raise UsageError(f"{split} labels: expected 0/1, found {sorted(np.unique(y))[:5]}")
    pid = meta.get("patient_id", "patient_id")
    blk = meta.get("block", "block")
    sensitive = list(meta.get("sensitive") or [])
    missing = [c for c in [pid, blk, *sensitive] if c not in frame.columns]
    if missing:
        raise UsageError(f"prepared {split} split: missing columns {missing}")
    if not (len(x) == len(y) == len(frame)):
        raise UsageError(
            f"prepared {split} split: {len(x)} feature rows, {len(y)} labels, "
            f"{len(frame)} table rows"
        )
    return Arrays(
        x=x,
        y=y.astype(np.float32),
        patient_id=frame[pid].astype(str).to_numpy(),
        block=frame[blk].astype(str).to_numpy(),
        sensitive=frame[sensitive].astype(str).reset_index(drop=True),
    )


def subset(a: Arrays, mask: np.ndarray) -> Arrays:
    return Arrays(
        x=a.x[mask],
        y=a.y[mask],
        patient_id=a.patient_id[mask],
        block=a.block[mask],
        sensitive=a.sensitive[mask].reset_index(drop=True),
    )


def load_data(path: str | Path) -> tuple[PreparedLike, str]:
    """Prepared data and its data version (the DVC md5), through :mod:`dpgov.data`."""
    folder = Path(path)
    if not folder.exists():
        raise UsageError(
            f"train.data: prepared data folder {folder} does not exist "
            "(run `dpgov data prepare` first)"
        )
    prepared = data_module.load_prepared(folder)
    return prepared, data_version_of(prepared, folder)


def data_version_of(prepared: PreparedLike, folder: Path | None) -> str:
    version = prepared.meta.get("data_version")
    if version:
        return str(version)
    fn = getattr(data_module, "data_version", None)
    if folder is not None and fn is not None:
        return str(fn(folder))
    raise UsageError("prepared data has no data version (meta.json data_version or DVC md5)")
