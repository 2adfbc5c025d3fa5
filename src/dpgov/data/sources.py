"""Reading a dataset as its contract describes it: CSV, Parquet, MedMNIST ``.npz``, or bundled.

Everything here turns unusable input into one :class:`~dpgov.errors.UsageError` line naming the
file, the column and the problem (exit 2): missing or unreadable file, empty table, a column the
contract names but the file lacks, a value that is not of the declared type, a missing or
non-binary label. Values that are readable but break the contract (out of range, not allowed,
duplicate patients) are left for validation to report (exit 1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgov.data.contract import IMAGE_KEY_COLUMNS, ColumnSpec, Contract
from dpgov.data.flchain import SOURCE, load_task_table
from dpgov.data.manifest import ManifestImages, manifest_images
from dpgov.errors import UsageError

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
IMAGE_SUFFIXES = {".npz": "npz"}
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


@dataclass
class Source:
    """A dataset read and typed per its contract.

    ``frame`` holds the contract's columns (plus any extra columns found), typed: integer as
    int64 (Int64 when missing values occur), float as float64, string as object, boolean as bool
    (boolean when missing). For images it is the metadata table with ``split`` (train/val/test),
    ``index`` and the label, and ``images`` maps split to an (N, C, H, W) array.
    """

    frame: Any
    name: str  # the file as given, or "bundled:flchain"
    sha256: str  # of the file bytes (all files for images); of the table for bundled data
    images: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    manifest: ManifestImages | None = None  # image files a manifest lists (kind image)


def is_bundled(source: str | Path | None) -> bool:
    return source is None or str(source) in ("bundled:flchain", "flchain")


def load_source(
    source: str | Path | None,
    contract: Contract,
    *,
    metadata: str | Path | None = None,
    horizon_years: float = 5.0,
) -> Source:
    """Read ``source`` (a path, or ``None``/``"bundled:flchain"``) and type it per ``contract``."""
    if is_bundled(source):
        if contract.kind != "tabular":
            raise UsageError("the bundled flchain dataset is tabular; the contract says image")
        frame = load_task_table(horizon_years)
        frame = coerce_table(frame, contract, SOURCE, row_offset=1)
        return Source(frame=frame, name=SOURCE, sha256=_frame_sha256(frame))
    path = Path(str(source))
    if not path.exists():
        raise UsageError(f"data {path}: no such file")
    if not path.is_file():
        raise UsageError(f"data {path}: not a file")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        if contract.kind != "image":
            raise UsageError(f"data {path}: an .npz image file needs a contract with kind: image")
        return _load_images(path, contract, metadata)
    if suffix not in TABLE_SUFFIXES:
        raise UsageError(
            f"data {path}: unsupported file type {suffix or '(none)'!r}; use .csv, .parquet or .npz"
        )
    if contract.kind != "tabular" and contract.images is None:
        raise UsageError(
            f"data {path}: a contract with kind: image needs an .npz file, or images: (a "
            "manifest over image files)"
        )
    if metadata is not None:
        raise UsageError("--metadata applies to image (.npz) data only")
    frame = read_table(path, contract)
    offset = 2 if TABLE_SUFFIXES[suffix] == "csv" else 1
    frame = coerce_table(frame, contract, str(path), row_offset=offset)
    if contract.images is not None:  # a manifest: every image found, hashed and decoded
        found = manifest_images(frame, path, contract, row_offset=offset)
        return Source(
            frame=frame, name=str(path), sha256=found.digest, files=[str(path)], manifest=found
        )
    return Source(frame=frame, name=str(path), sha256=_file_sha256(path), files=[str(path)])


def read_table(path: Path, contract: Contract | None = None) -> Any:
    """Read a CSV or Parquet file; string columns of the contract are read as text."""
    import pandas as pd

    kind = TABLE_SUFFIXES[path.suffix.lower()]
    try:
        if kind == "csv":
            text_cols = {}
            if contract is not None:
                text_cols = {c: str for c, s in contract.columns.items() if s.type == "string"}
            frame = pd.read_csv(path, dtype=text_cols or None, low_memory=False)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError as err:
        raise UsageError(f"data {path}: the file is empty (no header, no rows)") from err
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"data {path}: cannot read as {kind} ({first})") from err
    except Exception as err:  # pyarrow raises its own types for corrupt files
        if type(err).__module__.startswith("pyarrow"):
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UsageError(f"data {path}: cannot read as {kind} ({first})") from err
        raise
    if len(frame.columns) == 0:
        raise UsageError(f"data {path}: the table has no columns")
    if len(frame) == 0:
        raise UsageError(f"data {path}: the table is empty (no rows)")
    dupes = frame.columns[frame.columns.duplicated()].tolist()
    if dupes:
        raise UsageError(f"data {path}: column {dupes[0]!r} appears more than once")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def coerce_table(frame: Any, contract: Contract, where: str, *, row_offset: int = 1) -> Any:
    """Type every contract column; raise on a column missing or a value of the wrong type.

    ``row_offset`` turns a 0-based position into the number shown: 2 for CSV (the line, after
    the header), 1 for Parquet (the row).
    """

    where_rows = "line" if row_offset == 2 else "row"
    missing = [c for c in contract.columns if c not in frame.columns]
    if contract.kind == "image":
        missing = [c for c in missing if c != contract.label]
    if missing:
        found = ", ".join(map(str, frame.columns[:12])) + (" …" if len(frame.columns) > 12 else "")
        raise UsageError(
            f"data {where}: column {missing[0]!r} named in the contract is missing (found: {found})"
        )
    out = frame.copy()
    for name in out.columns:
        spec = contract.columns.get(name)
        if spec is None:
            if _is_text(out[name]):
                out[name] = _as_object(out[name])
            continue
        out[name] = _coerce_column(out[name], spec, name, where, where_rows, row_offset)
    label = contract.label
    if label in out.columns:
        out[label] = _binary_label(out[label], contract, where, where_rows, row_offset)
    return out.reset_index(drop=True)


def _is_text(col: Any) -> bool:
    import pandas as pd

    return pd.api.types.is_string_dtype(col.dtype) or col.dtype == object


def _as_object(col: Any) -> Any:
    """Strings as a plain object column (what Great Expectations reads best), None for missing."""
    import pandas as pd

    values = col.astype(object)
    return values.where(pd.notna(values), None)


def _first_bad(
    mask: Any, col: Any, where: str, name: str, what: str, rows: str, offset: int
) -> UsageError:
    pos = int(mask.to_numpy().nonzero()[0][0])
    value = col.iloc[pos]
    value = value.item() if hasattr(value, "item") else value
    count = int(mask.sum())
    return UsageError(
        f"data {where}: column {name!r}: expected {what}, found {value!r} ({rows} "
        f"{pos + offset}; {count} such value{'s' if count != 1 else ''})"
    )


def _coerce_column(
    col: Any, spec: ColumnSpec, name: str, where: str, rows: str, offset: int
) -> Any:
    import numpy as np
    import pandas as pd

    present = col.notna()
    if spec.type in ("integer", "float"):
        if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
            num = col.astype("float64")
        else:
            text = col.where(~present, col.astype(str).str.strip())
            num = pd.to_numeric(text, errors="coerce").astype("float64")
            bad = present & num.isna()
            if bad.any():
                raise _first_bad(bad, col, where, name, spec.type, rows, offset)
        inf = np.isinf(num.to_numpy())
        if inf.any():
            raise _first_bad(
                pd.Series(inf, index=col.index),
                col,
                where,
                name,
                f"a finite {spec.type}",
                rows,
                offset,
            )
        if spec.type == "float":
            return num
        frac = num.notna() & (num % 1 != 0)
        if frac.any():
            raise _first_bad(frac, col, where, name, "integer", rows, offset)
        if num.isna().any():
            return num.astype("Int64")
        return num.astype("int64")
    if spec.type == "string":
        if pd.api.types.is_float_dtype(col.dtype):
            # 1.0 read from a file is the code "1": keep whole numbers whole
            whole = col.dropna()
            if len(whole) and (whole % 1 == 0).all():
                col = col.astype("Int64")
        return _as_object(col.where(~present, col.astype(str)))
    # boolean
    if pd.api.types.is_bool_dtype(col.dtype):
        return col.astype("boolean") if not present.all() else col.astype(bool)
    text = col.astype(str).str.strip().str.lower()
    truth = text.isin(_TRUE)
    falsity = text.isin(_FALSE)
    bad = present & ~(truth | falsity)
    if bad.any():
        raise _first_bad(bad, col, where, name, "boolean (true/false, yes/no, 1/0)", rows, offset)
    if present.all():
        return truth.astype(bool)
    return truth.astype("boolean").where(present, pd.NA)


def _binary_label(col: Any, contract: Contract, where: str, rows: str, offset: int) -> Any:
    """The label as int64 0/1; missing or other values make the table unusable for training."""
    import pandas as pd

    name = contract.label
    missing = col.isna()
    if missing.any():
        pos = int(missing.to_numpy().nonzero()[0][0])
        raise UsageError(
            f"data {where}: column {name!r} (label): {int(missing.sum())} missing value(s), "
            f"first at {rows} {pos + offset}; every record needs a label"
        )
    if contract.positive_labels is not None:
        spec = contract.columns[name]
        wanted = contract.positive_labels
        if spec.type == "string":
            wanted = [str(v) for v in wanted]
        return col.isin(wanted).astype("int64")
    values = col.astype("int64") if col.dtype != object else col
    bad = ~values.isin([0, 1])
    if bad.any():
        pos = int(bad.to_numpy().nonzero()[0][0])
        seen = sorted(pd.unique(values[bad]).tolist())[:5]
        raise UsageError(
            f"data {where}: column {name!r} (label): values must be 0 or 1, found {seen} "
            f"(first at {rows} {pos + offset}); declare positive_labels to map other values"
        )
    return values.astype("int64")


def _file_sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _frame_sha256(frame: Any) -> str:
    import pandas as pd

    h = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


# --- images (MedMNIST .npz layout) -----------------------------------------------------------

IMAGE_SPLITS = ("train", "val", "test")


def _load_images(path: Path, contract: Contract, metadata: str | Path | None) -> Source:
    import numpy as np
    import pandas as pd

    try:
        npz = np.load(path, allow_pickle=False)
        keys = set(npz.files)
    except (OSError, ValueError) as err:
        raise UsageError(f"data {path}: cannot read as .npz ({err})") from err
    for needed in ("train_images", "train_labels", "test_images", "test_labels"):
        if needed not in keys:
            raise UsageError(
                f"data {path}: array {needed!r} is missing (MedMNIST layout: train_images, "
                f"train_labels, val_images, val_labels, test_images, test_labels)"
            )
    images: dict[str, Any] = {}
    rows = []
    shape = None
    for split in IMAGE_SPLITS:
        if f"{split}_images" not in keys:
            continue
        try:
            imgs = npz[f"{split}_images"]
            labels = npz[f"{split}_labels"]
        except KeyError as err:
            raise UsageError(f"data {path}: array {split}_labels is missing") from err
        except ValueError as err:
            raise UsageError(f"data {path}: cannot read {split} arrays ({err})") from err
        imgs = _nchw(imgs, path, split)
        if shape is None:
            shape = imgs.shape[1:]
        elif imgs.shape[1:] != shape:
            raise UsageError(
                f"data {path}: {split}_images have shape {list(imgs.shape[1:])}, "
                f"train_images {list(shape)}"
            )
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or len(labels) != len(imgs):
            raise UsageError(
                f"data {path}: {split}_labels has shape {list(labels.shape)}; expected "
                f"[{len(imgs)}] or [{len(imgs)}, 1] (one class per image)"
            )
        if not np.issubdtype(imgs.dtype, np.integer) and not np.isfinite(imgs).all():
            raise UsageError(f"data {path}: {split}_images hold NaN or infinite pixels")
        images[split] = imgs
        rows.append(
            pd.DataFrame({"split": split, "index": np.arange(len(imgs)), contract.label: labels})
        )
    table = pd.concat(rows, ignore_index=True)
    if len(table) == 0 or len(images["train"]) == 0:
        raise UsageError(f"data {path}: train_images holds no images")
    files = [path]
    if metadata is not None:
        meta_path = Path(metadata)
        if not meta_path.is_file():
            raise UsageError(f"metadata {meta_path}: no such file")
        if meta_path.suffix.lower() not in TABLE_SUFFIXES:
            raise UsageError(f"metadata {meta_path}: use a .csv or .parquet file")
        meta = read_table(meta_path, contract)
        for key in IMAGE_KEY_COLUMNS:
            if key not in meta.columns:
                raise UsageError(
                    f"metadata {meta_path}: column {key!r} is missing (each row names an image "
                    f"by split and index)"
                )
        if contract.label in meta.columns:
            raise UsageError(
                f"metadata {meta_path}: column {contract.label!r} clashes with the label taken "
                f"from the .npz file"
            )
        meta["split"] = meta["split"].astype(str)
        meta["index"] = pd.to_numeric(meta["index"], errors="coerce")
        bad = meta["index"].isna() | (meta["index"] % 1 != 0)
        if bad.any():
            pos = int(bad.to_numpy().nonzero()[0][0])
            raise UsageError(
                f"metadata {meta_path}: column 'index': expected integer, found "
                f"{meta['index'].iloc[pos]!r} (row {pos + 1})"
            )
        meta["index"] = meta["index"].astype("int64")
        key = meta[list(IMAGE_KEY_COLUMNS)]
        if key.duplicated().any():
            pos = int(key.duplicated().to_numpy().nonzero()[0][0])
            raise UsageError(
                f"metadata {meta_path}: image ({meta['split'].iloc[pos]}, "
                f"{meta['index'].iloc[pos]}) is described twice (row {pos + 1})"
            )
        merged = meta.merge(
            table[list(IMAGE_KEY_COLUMNS)], on=list(IMAGE_KEY_COLUMNS), how="left", indicator=True
        )
        orphan = (merged["_merge"] == "left_only").to_numpy()
        if orphan.any():
            pos = int(orphan.nonzero()[0][0])
            raise UsageError(
                f"metadata {meta_path}: row {pos + 1} names image ({meta['split'].iloc[pos]}, "
                f"{meta['index'].iloc[pos]}), which {path.name} does not hold"
            )
        table = table.merge(meta, on=list(IMAGE_KEY_COLUMNS), how="left")
        files.append(meta_path)
    where = f"{path}" + (f" + {metadata}" if metadata is not None else "")
    frame = coerce_table(table, contract, where, row_offset=1)
    return Source(
        frame=frame,
        name=str(path),
        sha256=_file_sha256(*files),
        images=images,
        files=[str(f) for f in files],
    )


def _nchw(imgs: Any, path: Path, split: str) -> Any:
    """(N, H, W) → (N, 1, H, W); (N, H, W, C) with C in 1, 3, 4 → (N, C, H, W)."""
    import numpy as np

    imgs = np.asarray(imgs)
    if imgs.ndim == 3:
        return imgs[:, None, :, :]
    if imgs.ndim == 4 and imgs.shape[3] in (1, 3, 4):
        return np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))
    if imgs.ndim == 4 and imgs.shape[1] in (1, 3, 4):
        return imgs
    raise UsageError(
        f"data {path}: {split}_images has shape {list(imgs.shape)}; expected (N, H, W) or "
        f"(N, H, W, C) with C in 1, 3, 4"
    )
