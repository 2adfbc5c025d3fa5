"""Small synthetic prepared data in the shape of ``dpgov.data``'s output (tests, benchmarks).

Tabular: a logistic model of a few standardised features, with sex and age band and blocks.
Images: 1-channel pictures whose label is whether a bright blob sits in the upper half.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

AGE_BANDS = ["<50", "50-59", "60-69", "70-79", "80+"]


@dataclass
class SyntheticPrepared:
    """In-memory stand-in for ``dpgov.data.PreparedData`` (same attributes and methods)."""

    meta: dict[str, Any]
    train: pd.DataFrame
    test: pd.DataFrame
    images: dict[str, np.ndarray] | None = None

    def features(self, split: str) -> np.ndarray:
        if self.images is not None:
            return self.images[split]
        frame = self.train if split == "train" else self.test
        return frame[self.meta["features"]].to_numpy(dtype=np.float32)

    def labels(self, split: str) -> np.ndarray:
        frame = self.train if split == "train" else self.test
        return frame[self.meta["label"]].to_numpy()


def make_tabular(
    *,
    n_train: int = 600,
    n_test: int = 300,
    n_features: int = 6,
    blocks: int = 2,
    seed: int = 0,
    dataset: str = "synth",
    signal: float = 1.5,
) -> SyntheticPrepared:
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    w = np.zeros(n_features)
    w[: min(3, n_features)] = signal
    logits = x @ w - 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    names = [f"f{i}" for i in range(n_features)]
    frame = pd.DataFrame(x, columns=names)
    frame.insert(0, "patient_id", [f"p{i:06d}" for i in range(n)])
    block_names = [f"b{i}" for i in range(blocks)]
    frame.insert(1, "block", [block_names[i % blocks] for i in range(n)])
    frame.insert(2, "label", y)
    frame.insert(3, "sex", rng.choice(["F", "M"], size=n))
    frame.insert(4, "age_band", rng.choice(AGE_BANDS, size=n, p=[0.3, 0.3, 0.2, 0.15, 0.05]))
    train, test = frame.iloc[:n_train].reset_index(drop=True), frame.iloc[n_train:]
    meta = {
        "dataset": dataset,
        "kind": "tabular",
        "features": names,
        "label": "label",
        "patient_id": "patient_id",
        "block": "block",
        "sensitive": ["sex", "age_band"],
        "blocks": {b: int((train["block"] == b).sum()) for b in block_names},
        "image_shape": None,
        "data_version": f"synthetic-{seed}-{n_train}-{n_test}.dir",
    }
    return SyntheticPrepared(meta=meta, train=train, test=test.reset_index(drop=True))


def make_images(
    *,
    n_train: int = 300,
    n_test: int = 150,
    size: int = 16,
    seed: int = 0,
    dataset: str = "synth-img",
) -> SyntheticPrepared:
    base = make_tabular(n_train=n_train, n_test=n_test, n_features=1, seed=seed, dataset=dataset)
    rng = np.random.default_rng(seed + 1)
    images: dict[str, np.ndarray] = {}
    for split, frame in (("train", base.train), ("test", base.test)):
        n = len(frame)
        img = rng.normal(0, 0.3, size=(n, 1, size, size)).astype(np.float32)
        upper = frame["label"].to_numpy() == 1
        rows = np.where(
            upper, rng.integers(1, size // 2 - 2, n), rng.integers(size // 2, size - 3, n)
        )
        cols = rng.integers(1, size - 3, n)
        for i in range(n):
            img[i, 0, rows[i] : rows[i] + 3, cols[i] : cols[i] + 3] += 2.0
        images[split] = img
    meta = {**base.meta, "kind": "image", "features": [], "image_shape": [1, size, size]}
    return SyntheticPrepared(meta=meta, train=base.train, test=base.test, images=images)


def write_prepared(data: SyntheticPrepared, folder: Path) -> Path:
    """Write ``train.parquet``, ``test.parquet`` and ``meta.json`` (tabular only)."""
    if data.images is not None:
        raise ValueError("write_prepared writes tabular data only")
    folder.mkdir(parents=True, exist_ok=True)
    data.train.to_parquet(folder / "train.parquet", index=False)
    data.test.to_parquet(folder / "test.parquet", index=False)
    (folder / "meta.json").write_text(json.dumps(data.meta, indent=2))
    return folder
