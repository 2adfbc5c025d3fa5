"""Reading prepared data (:class:`PreparedData`, :func:`load_prepared`): what training,
evaluation and validation consume. Writing it is :mod:`dpgov.data.preparation`'s job.

``data/prepared/<dataset>/`` holds ``train.parquet`` and ``test.parquet`` (disjoint patients),
``meta.json`` and, for images, ``train_images.npy`` / ``test_images.npy`` (N, C, H, W) indexed
by the ``image_index`` column, or (images from a manifest) content-addressed image files under
``images/`` named by the ``image_file`` column and read per batch (:meth:`PreparedData.images`
gives a lazy :class:`~dpgov.data.image_store.DiskImages`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgov.data.image_store import DiskImages, Transform
from dpgov.data.versioning import data_version
from dpgov.errors import UsageError

SPLITS = ("train", "test")
META_KEYS = (
    "dataset",
    "kind",
    "features",
    "label",
    "patient_id",
    "block",
    "sensitive",
    "blocks",
    "image_shape",
)


@dataclass
class PreparedData:
    """Prepared train and test tables with their meta.json (``meta["data_version"]`` is the
    DVC md5 of the folder, filled in when loaded)."""

    path: Path
    meta: dict[str, Any]
    train: Any  # pandas DataFrame
    test: Any  # pandas DataFrame
    _images: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def dataset(self) -> str:
        return str(self.meta["dataset"])

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def data_version(self) -> str:
        return str(self.meta["data_version"])

    def frame(self, split: str) -> Any:
        if split not in SPLITS:
            raise UsageError(f"split must be 'train' or 'test', found {split!r}")
        return self.train if split == "train" else self.test

    def features(self, split: str, *, flat: bool = False) -> Any:
        """Features as float32: (N, F) for tabular data; for images the pixels scaled to
        [0, 1] as (N, C, H, W), or (N, C*H*W) with ``flat=True``."""
        import numpy as np

        df = self.frame(split)
        if self.kind == "image":
            x = self.images(split)
            return x.reshape(len(x), -1) if flat else x
        return df[self.meta["features"]].to_numpy(dtype=np.float32)

    def labels(self, split: str) -> Any:
        """Labels, int64 0/1."""
        import numpy as np

        return self.frame(split)["label"].to_numpy(dtype=np.int64)

    def patients(self, split: str) -> Any:
        return self.frame(split)["patient_id"].to_numpy(dtype=object)

    def blocks(self, split: str) -> Any:
        return self.frame(split)["block"].to_numpy(dtype=object)

    def sensitive(self, split: str) -> Any:
        """The sensitive attributes (``sex``, ``age_band``) as a DataFrame of strings."""
        return self.frame(split)[list(self.meta["sensitive"])]

    def images(self, split: str) -> Any:
        """Images of the split's rows, in row order, float32 (N, C, H, W) scaled to [0, 1]
        (image files: a lazy DiskImages, decoded and transformed per batch)."""
        import numpy as np

        if self.kind != "image":
            raise UsageError(f"prepared data {self.path} is tabular: it has no images")
        df = self.frame(split)
        info = self.meta["images"]
        if info.get("storage") == "files":  # read from disk per batch, never all at once
            return DiskImages(
                self.path,
                df[info["column"]].to_numpy(dtype=object),
                Transform.from_dict(info["transform"]),
                tuple(self.meta["image_shape"]),
            )
        if split not in self._images:
            file = self.path / info["files"][split]
            try:
                self._images[split] = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise UsageError(f"prepared data {file}: cannot read ({err})") from err
        arr = self._images[split]
        picked = np.asarray(arr[df[info["index_column"]].to_numpy()], dtype=np.float32)
        scale = float(info.get("scale", 1.0))
        return picked * np.float32(scale) if scale != 1.0 else picked

    def select_blocks(self, blocks: list[str]) -> Any:
        """Training rows of the given blocks (a DataFrame)."""
        unknown = sorted(set(blocks) - set(self.meta["blocks"]))
        if unknown:
            raise UsageError(
                f"dataset {self.dataset!r} has no block {unknown[0]!r} (blocks: "
                f"{', '.join(self.meta['blocks'])})"
            )
        return self.train[self.train["block"].isin(blocks)].reset_index(drop=True)


def load_prepared(path: str | Path, *, version: bool = True) -> PreparedData:
    """Read a prepared folder (``data/prepared/<dataset>``). ``version=False`` skips hashing."""
    import pandas as pd

    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"prepared data {folder}: no such folder (run `dpgov data prepare` first)")
    meta_file = folder / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
    except OSError as err:
        raise UsageError(f"prepared data {meta_file}: cannot read ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise UsageError(f"prepared data {meta_file}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise UsageError(f"prepared data {meta_file}: expected a JSON object")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UsageError(f"prepared data {meta_file}: key {missing[0]!r} is missing")
    frames = {}
    for split in SPLITS:
        file = folder / f"{split}.parquet"
        try:
            frames[split] = pd.read_parquet(file)
        except Exception as err:  # OSError, pyarrow errors for corrupt files
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UsageError(f"prepared data {file}: cannot read ({first})") from err
    if version:
        meta["data_version"] = data_version(folder)
    return PreparedData(path=folder, meta=meta, train=frames["train"], test=frames["test"])
