"""Images per second from disk (issue 19, Measure): PNG 64×64 grayscale, prepared from a
manifest and read back through the lazy image dataset (``dpgov.data.image_store``) in batches,
as DP-SGD reads them, against the in-memory route (a NumPy array of the same pixels, the
MedMNIST ``.npz`` layout's TensorDataset) in the same run.

Writes benchmarks/RESULTS_imaging_io.md. Run: ``.venv/bin/python benchmarks/bench_imaging_io.py
[--images N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, stamp

OUT = Path(__file__).resolve().parent / "RESULTS_imaging_io.md"
BATCH = 64


def loader_rate(dataset: object, *, workers: int) -> tuple[float, int]:
    """Images per second over one pass of a DataLoader (batches of BATCH)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)  # type: ignore[arg-type]
    seen = 0
    t = time.perf_counter()
    for xb, _ in loader:
        seen += len(xb)
    return seen / (time.perf_counter() - t), seen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args()
    os.environ.setdefault("DPGOV_PSEUDONYM_KEY", "bench imaging io")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from dpgov.data import load_prepared, prepare
    from dpgov.testing.image_files import make_image_folder, manifest_contract
    from dpgov.training.inputs import arrays

    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["DPGOV_HOME"] = str(root / "home")
        n_patients = args.images
        t = time.perf_counter()
        m = make_image_folder(root / "src", n_patients=n_patients, images_per_patient=(1,), size=64)
        gen_s = time.perf_counter() - t
        m.to_csv(root / "src" / "m.csv", index=False)
        (root / "c.yaml").write_text(manifest_contract(size=64, max_records=1))
        (root / "c32.yaml").write_text(
            manifest_contract(size=64, max_records=1).replace(
                "resize: 64\n    center_crop: 64", "resize: 36\n    center_crop: 32"
            )
        )
        t = time.perf_counter()
        prepare(root / "src" / "m.csv", root / "c.yaml", out=root / "p", register=False)
        prep_s = time.perf_counter() - t
        prep = load_prepared(root / "p")
        a = arrays(prep, "train")
        n = len(a.y)
        on_disk = sum(f.stat().st_size for f in (root / "p" / "images").rglob("*.png"))

        # baseline: the same pixels in memory (decoded once, as the .npz route holds them)
        t = time.perf_counter()
        x_mem = a.x[0:n]
        decode_all_s = time.perf_counter() - t
        mem_ds = TensorDataset(torch.from_numpy(x_mem), torch.from_numpy(a.y))
        base, _ = loader_rate(mem_ds, workers=0)
        disk0, seen = loader_rate(a.x.torch_dataset(a.y), workers=0)
        disk2, _ = loader_rate(a.x.torch_dataset(a.y), workers=2)
        prep32 = root / "p32"
        prepare(root / "src" / "m.csv", root / "c32.yaml", out=prep32, register=False)
        a32 = arrays(load_prepared(prep32), "train")
        disk32, _ = loader_rate(a32.x.torch_dataset(a32.y), workers=0)
        assert seen == n and np.isfinite(x_mem).all()
        rows = [
            ("in memory (TensorDataset), baseline", base, 1.0),
            ("from disk, 1 process", disk0, disk0 / base),
            ("from disk, 2 loader workers", disk2, disk2 / base),
            ("from disk, resize 36 + centre crop 32, 1 process", disk32, disk32 / base),
        ]
    lines = [
        "# Images from disk (issue 19)",
        "",
        f"{stamp()} · {machine()} · `benchmarks/bench_imaging_io.py --images {args.images}`",
        "",
        f"Load average (1 min) at the start: {load:.1f} (the machine was shared).",
        "",
        f"{args.images} generated PNGs, 64×64 grayscale, one per patient ({n} in the training "
        f"split, {on_disk / n:.0f} bytes each on disk); DataLoader batches of {BATCH}, "
        "shuffled, one torch thread; transform: grayscale, normalise (mean 0.5, std 0.25). "
        "Baseline in the same run: the same pixels decoded once into memory.",
        "",
        "| route | images/s | ratio to in memory |",
        "|---|---:|---:|",
        *[f"| {name} | {rate:,.0f} | {ratio:.3f}x |" for name, rate, ratio in rows],
        "",
        f"- prepare (hash, decode, content-addressed copy of {args.images} files, split, "
        f"parquet): {prep_s:.2f} s ({args.images / prep_s:,.0f} images/s); generating the "
        f"PNGs took {gen_s:.2f} s.",
        f"- decoding all {n} training images into one array: {decode_all_s:.2f} s "
        f"({n / decode_all_s:,.0f} images/s).",
        "- Reading from disk decodes one PNG per index in the dataset's `__getitem__` (Pillow); "
        "memory holds one batch, not the dataset.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
