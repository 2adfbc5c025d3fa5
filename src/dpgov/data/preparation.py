"""Prepare: a dataset and its contract → ``data/prepared/<dataset>/`` (train, test, meta).

What it does, in order (every step deterministic for a given input, contract, params and
pseudonym key, so DVC sees the same data version again):

1. read and type the source per the contract (unusable input: one line, exit 2);
2. replace source patient ids by keyed hashes of (domain, id) under the deployment's key
   (``pseudonym.py``);
3. split patients (not records) into train and test, each patient by a function of their own
   pseudonym alone: a keyed hash of (seed, pseudonym) mapped to [0, 1), below ``test_fraction``
   → test (images keep their MedMNIST split: train + val → train, test → test);
4. assign blocks by the contract's fixed boundaries (``block.edges``), each record by its own
   block value alone;
5. encode features with training statistics only: numbers imputed with the training median
   (plus a ``<col>_missing`` indicator for nullable columns) and standardised; booleans 0/1;
   strings one-hot; everything float32;
6. write into a temporary folder, compute its DVC md5, register the blocks in the ledger (the
   key's fingerprint first, then each training block with its members' pseudonyms, its domain
   and its split, and each test block ``test-<block>`` with split ``test``), then rename
   into place: a failure leaves the previous output untouched and
   nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from dpgov import __version__
from dpgov.data.contract import RESERVED_COLUMNS, Contract, LoadedContract, load_contract
from dpgov.data.manifest import IMAGE_COLUMN, copy_images, prepared_images
from dpgov.data.params import DataParams
from dpgov.data.pseudonym import METHOD as PSEUDONYM_METHOD
from dpgov.data.pseudonym import PseudonymKey, load_key, pseudonymise
from dpgov.data.sources import Source, is_bundled, load_source
from dpgov.data.test_blocks import TEST_SPLIT, TRAIN_SPLIT, evaluation_members
from dpgov.data.versioning import compute_md5
from dpgov.errors import UsageError
from dpgov.ledger import Ledger

FORMAT = 1
PREPARED_ROOT = Path("data/prepared")
IMAGE_FILES = {"train": "train_images.npy", "test": "test_images.npy"}
MAX_CATEGORIES = 50
SPLIT_METHOD = "per patient: keyed BLAKE2b of (seed, pseudonym) in [0, 1) below test_fraction"
SPLIT_LABEL = b"dpgov test split v1\x00"


@dataclass(frozen=True)
class PrepareResult:
    dataset: str
    path: str
    data_version: str
    kind: str
    blocks: dict[str, int]  # block → training patients
    n_train: int
    n_test: int
    features: list[str]
    registered: list[str] = field(default_factory=list)  # blocks newly added to the ledger

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_output(dataset: str) -> Path:
    return PREPARED_ROOT / dataset


def prepare(
    source: str | Path | None = None,
    contract: str | Path | LoadedContract | None = None,
    *,
    dataset: str | None = None,
    out: str | Path | None = None,
    metadata: str | Path | None = None,
    params: DataParams | None = None,
    register: bool = True,
    ledger_url: str | None = None,
) -> PrepareResult:
    """Prepare ``source`` (default: the bundled flchain cohort) under its contract.

    Registers each block with its number of training patients in the ledger
    (``Ledger.add_block``) unless ``register`` is false. Raises UsageError for unusable input.
    """
    params = params or DataParams()
    loaded = contract if isinstance(contract, LoadedContract) else load_contract(contract)
    if source is None and loaded.contract.dataset != "flchain":
        raise UsageError(
            f"contract {loaded.path} describes dataset {loaded.contract.dataset!r}: give its "
            "data with --data"
        )
    name = dataset or loaded.contract.dataset
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise UsageError(f"dataset name {name!r} must be 1-64 letters, digits, '_', '.', '-'")
    src = load_source(
        source, loaded.contract, metadata=metadata, horizon_years=params.horizon_years
    )
    key = load_key()
    train, test, meta, arrays = build_prepared(src, loaded, name, params, key=key)
    target = Path(out) if out is not None else default_output(name)
    registered: list[str] = []

    def register_blocks(version: str) -> None:
        held_out = evaluation_members(test)
        if clash := sorted(set(held_out) & set(meta["blocks"])):
            raise UsageError(f"prepare {name}: training block {clash[0]!r} has a test block's name")
        registered.extend(
            register_members(
                name,
                {**block_members(train), **held_out},
                version,
                ledger_url,
                domain=loaded.contract.id_domain,
                key_fingerprint=key.fingerprint,
                test_blocks=frozenset(held_out),
            )
        )

    version = write_prepared(
        target, train, test, meta, arrays, before_commit=register_blocks if register else None
    )
    return PrepareResult(
        dataset=name,
        path=str(target),
        data_version=version,
        kind=meta["kind"],
        blocks=dict(meta["blocks"]),
        n_train=len(train),
        n_test=len(test),
        features=list(meta["features"]),
        registered=registered,
    )


def block_members(train: Any) -> dict[str, list[str]]:
    """Each training block's members: the sorted distinct pseudonyms of its rows."""
    return {
        str(block): sorted(set(ids.tolist()))
        for block, ids in train.groupby("block", sort=True)["patient_id"]
    }


def register_members(
    dataset: str,
    members: dict[str, list[str]],
    version: str,
    url: str | None,
    *,
    domain: str,
    key_fingerprint: str,
    test_blocks: frozenset[str] = frozenset(),
) -> list[str]:
    """Record the key's fingerprint (a different key is refused before anything else), then add
    every block with its members; check all first, so a conflict changes nothing. A block the
    ledger holds without members, of this data version, gets them attached. ``members``
    holds the training blocks and the ``test_blocks`` (``test-<block>``, split ``test``:
    :mod:`dpgov.data.test_blocks`). Returns the blocks newly added."""
    led = Ledger.open(url)
    try:
        known = {b.block: b for b in led.blocks(dataset)}
        for block, pseudonyms in members.items():
            info = known.get(block)
            if info is not None and info.patients != len(pseudonyms):
                raise UsageError(
                    f"prepare {dataset}: block {block!r} is registered in the ledger with "
                    f"{info.patients} patients, this preparation gives {len(pseudonyms)}: new "
                    f"patients arrive as a new block (keep the seed, test_fraction and source of "
                    f"the registered data, or use another dataset name)"
                )
        led.pseudonym_key(key_fingerprint)
        legacy = _without_members(led, dataset) & set(known)
        added = []
        for block, pseudonyms in members.items():
            if block in legacy:  # registered without members (an older ledger)
                if known[block].data_version == version:
                    led.attach_members(
                        dataset=dataset, block=block, members=pseudonyms, data_version=version
                    )
                continue  # another data version: it stays conservative
            entry = led.add_block(
                dataset=dataset,
                block=block,
                patients=len(pseudonyms),
                data_version=version,
                members=pseudonyms,
                domain=domain,
                split=TEST_SPLIT if block in test_blocks else TRAIN_SPLIT,
            )
            if entry is not None and block not in known:
                added.append(block)
        return added
    finally:
        led.close()


def _without_members(led: Ledger, dataset: str) -> set[str]:
    """The blocks of ``dataset`` the chain records without members (none attached since)."""
    digest: dict[str, Any] = {}
    for e in led.entries("block_added"):
        if e.payload.get("dataset") == dataset:
            digest[str(e.payload.get("block"))] = e.payload.get("members_digest")
    for e in led.entries("members_attached"):
        if e.payload.get("dataset") == dataset:
            digest[str(e.payload.get("block"))] = e.payload.get("members_digest")
    return {b for b, d in digest.items() if d is None}


# --- building the prepared tables ------------------------------------------------------------


def build_prepared(
    src: Source,
    loaded: LoadedContract,
    dataset: str,
    params: DataParams,
    *,
    key: PseudonymKey | None = None,
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """The prepared train and test tables, meta.json and (images) the pixel arrays. Patient
    ids become pseudonyms of (the contract's id domain, id) under ``key`` (default: the
    deployment's, :func:`dpgov.data.pseudonym.load_key`)."""
    import numpy as np
    import pandas as pd

    c = loaded.contract
    key = key or load_key()
    frame = src.frame
    if c.patient_id is not None and c.patient_id in frame.columns:
        raw_ids = frame[c.patient_id]
        if raw_ids.isna().any():
            pos = int(raw_ids.isna().to_numpy().nonzero()[0][0])
            raise UsageError(
                f"data {src.name}: column {c.patient_id!r} (patient id): missing value at row "
                f"{pos + 1}; every record needs a patient"
            )
    elif c.privacy.one_record_per_patient and c.images is not None:  # manifest: one per path
        raw_ids = frame[c.images.path].astype(str)
    elif c.privacy.one_record_per_patient:  # images declared one per patient
        raw_ids = frame["split"].astype(str) + ":" + frame["index"].astype(str)
    else:  # the contract refuses this already; never count a record as a patient unsaid
        raise UsageError(
            f"data {src.name}: no patient id column: declare patient_id, or "
            "privacy.one_record_per_patient: true if every image is a different patient"
        )
    pid = pseudonymise(c.id_domain, raw_ids, key=key.key)
    label = frame[c.label].astype("int64")

    # blocks as the source gives them
    if c.block.column is not None:
        raw_block = frame[c.block.column]
        if raw_block.isna().any():
            pos = int(raw_block.isna().to_numpy().nonzero()[0][0])
            raise UsageError(
                f"data {src.name}: column {c.block.column!r} (block): missing value at row "
                f"{pos + 1}; every record needs a block"
            )
    else:
        raw_block = pd.Series([c.block.constant] * len(frame), index=frame.index, dtype=object)

    # split by patient
    if c.kind == "image" and src.manifest is None:
        is_test = (frame["split"] == "test").to_numpy()
    else:
        is_test = split_patients(pid, params.test_fraction, params.seed, key=key.key)

    # blocks as prepared
    grouped: dict[str, list[Any]] = {}
    if c.block.edges is not None:
        block, grouped = fixed_blocks(raw_block, block_ranges(c), src.name)
    else:
        block = raw_block.astype(str).astype(object)

    base = pd.DataFrame({"patient_id": pid, "block": block, "label": label})
    sensitive: list[str] = []
    if c.sensitive.sex:
        sex = frame[c.sensitive.sex]
        base["sex"] = sex.astype(object).where(sex.notna(), "unknown").astype(str).astype(object)
        sensitive.append("sex")
    if c.sensitive.age:
        base["age_band"] = age_bands(frame[c.sensitive.age], c.sensitive.age_bands)
        sensitive.append("age_band")

    train_mask = ~is_test
    feats, encoding = _encode_features(frame, c, train_mask)
    table = pd.concat([base, feats], axis=1) if len(feats.columns) else base
    arrays: dict[str, Any] = {}
    image_shape = None
    images_meta = None
    if src.manifest is not None:  # image files: content-addressed copies (manifest.py)
        files, arrays["files"], image_shape, images_meta = prepared_images(
            src.manifest, c, src.name
        )
        table[IMAGE_COLUMN] = files
    elif c.kind == "image":
        assert src.images is not None
        offsets = {"train": 0, "val": len(src.images["train"]), "test": 0}
        table["image_index"] = (frame["index"] + frame["split"].map(offsets)).astype("int64")
        train_parts = [src.images[s] for s in ("train", "val") if s in src.images]
        arrays["train"] = np.concatenate(train_parts, axis=0)
        arrays["test"] = src.images["test"]
        image_shape = [int(x) for x in arrays["train"].shape[1:]]
        dtype = arrays["train"].dtype
        if np.issubdtype(dtype, np.integer):
            scale = 1.0 / 255.0 if dtype == np.uint8 else 1.0
            if dtype != np.uint8:
                arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
        else:
            arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
            scale = 1.0
        images_meta = {
            "files": dict(IMAGE_FILES),
            "index_column": "image_index",
            "layout": "NCHW",
            "dtype": str(arrays["train"].dtype),
            "scale": scale,
            "note": "features(split) = images[split][image_index] * scale, float32; "
            "train holds the source train then val images",
        }

    train = table[train_mask].reset_index(drop=True)
    test = table[is_test].reset_index(drop=True)
    if len(train) == 0:
        raise UsageError(f"data {src.name}: no records left for training")
    if len(test) == 0:
        raise UsageError(
            f"data {src.name}: the test split is empty ({len(table)} records, test_fraction "
            f"{params.test_fraction})"
        )
    blocks = {
        str(k): int(v) for k, v in train.groupby("block", sort=True)["patient_id"].nunique().items()
    }
    test_blocks = {
        str(k): int(v) for k, v in test.groupby("block", sort=True)["patient_id"].nunique().items()
    }
    run_params: dict[str, Any] = {
        "test_fraction": params.test_fraction,
        "seed": params.seed,
        "split": SPLIT_METHOD,
    }
    if is_bundled(src.name):
        run_params["horizon_years"] = params.horizon_years
    meta: dict[str, Any] = {
        "format": FORMAT,
        "dataset": dataset,
        "kind": c.kind,
        "features": [col for col in feats.columns],
        "label": "label",
        "patient_id": "patient_id",
        "block": "block",
        "sensitive": sensitive,
        "blocks": blocks,
        "test_blocks": test_blocks,
        "sensitive_groups": declared_groups(c),
        "image_shape": image_shape,
        "images": images_meta,
        "n_train": len(train),
        "n_test": len(test),
        "n_train_patients": int(train["patient_id"].nunique()),
        "n_test_patients": int(test["patient_id"].nunique()),
        "positives": {"train": int(train["label"].sum()), "test": int(test["label"].sum())},
        # file names only, so the data version does not depend on where the files lie
        "source": {"name": _base(src.name), "sha256": src.sha256},
        "contract": {"name": _base(loaded.path), "sha256": loaded.sha256},
        "params": run_params,
        "block_source": {
            "column": c.block.column,
            "constant": c.block.constant,
            "edges": list(c.block.edges) if c.block.edges is not None else None,
            "grouped": grouped or None,
        },
        "pseudonymisation": {
            "method": PSEUDONYM_METHOD,
            "key": key.source,
            "domain": c.id_domain,
            "key_fingerprint": key.fingerprint,
        },
        "privacy_unit": {
            "max_records_per_patient": c.privacy.max_records_per_patient,
            "group_privacy": c.privacy.group_privacy,
        },
        "encoding": encoding,
        "created_by": f"dpgov {__version__}",
    }
    return train, test, meta, arrays


def _base(name: str) -> str:
    if name.startswith(("bundled:", "builtin:")):
        return name.split(":", 1)[1] + (".yaml" if name.startswith("builtin:") else "")
    return Path(name).name


def split_patients(pid: Any, fraction: float, seed: int, *, key: bytes) -> Any:
    """Test membership per record, a function of each record's own pseudonym (and the
    deployment's key, the seed and ``fraction``) alone: u = keyed BLAKE2b(seed, pseudonym)
    read as a number in [0, 1); u < ``fraction`` → test. Adding or removing a patient changes no
    other patient's split (a stratified split drawn over the data would reassign others). Not
    stratified by label or block: the test share of a stratum is ``fraction`` on average
    (binomial), not exactly."""
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(pid, sort=False)
    mac_key = hashlib.blake2b(SPLIT_LABEL + key).digest()  # a key of its own, never the pseudonym's
    prefix = f"{int(seed)}\x1f".encode()
    blake = hashlib.blake2b
    u = np.asarray(
        [
            int.from_bytes(
                blake(prefix + str(p).encode(), key=mac_key, digest_size=8).digest(), "big"
            )
            / 2.0**64
            for p in uniques
        ],
        dtype=np.float64,
    )
    return (u < fraction)[codes]


def block_ranges(c: Contract) -> list[tuple[str, int | None, int | None]]:
    """The blocks the contract's ``block.edges`` define: (name, lowest, highest value), None for
    an open end. Named by the values covered, the column's declared min/max closing the outer
    blocks: min 1995, max 2003, edges [1996, 1997, 1998] → 1995, 1996, 1997, 1998-2003."""
    assert c.block.edges is not None and c.block.column is not None
    spec = c.columns[c.block.column]
    lo = None if spec.min is None else math.ceil(spec.min)
    hi = None if spec.max is None else math.floor(spec.max)
    bounds = [lo, *c.block.edges]
    tops = [e - 1 for e in c.block.edges] + [hi]
    out: list[tuple[str, int | None, int | None]] = []
    for a, b in zip(bounds, tops, strict=True):
        if a is None:
            name = f"<{b + 1}" if b is not None else "all"
        elif b is None:
            name = f"{a}+"
        else:
            name = str(a) if a == b else f"{a}-{b}"
        out.append((name, a, b))
    return out


def fixed_blocks(
    raw_block: Any, ranges: list[tuple[str, int | None, int | None]], where: str
) -> tuple[Any, dict[str, list[Any]]]:
    """Each record's block from its own integer block value and the contract's fixed ranges;
    also each block's values present (for meta.json). A value outside every range (below the
    column's min or above its max): UsageError."""
    import numpy as np
    import pandas as pd

    values = raw_block.astype("int64")
    names: dict[int, str] = {}
    grouped: dict[str, list[Any]] = {}
    for v in sorted(pd.unique(values).tolist()):
        v = int(v)
        for name, lo, hi in ranges:
            if (lo is None or v >= lo) and (hi is None or v <= hi):
                names[v] = name
                grouped.setdefault(name, []).append(v)
                break
        else:
            pos = int(np.flatnonzero(values.to_numpy() == v)[0])
            raise UsageError(
                f"data {where}: block value {v} (row {pos + 1}) is outside the contract's "
                "block column range"
            )
    return values.map(names).astype(object), grouped


def age_band_labels(edges: list[float]) -> list[str]:
    """The band names of ``edges``: [60, 70, 80] → '<60', '60-69', '70-79', '80+'."""
    integral = all(float(e).is_integer() for e in edges)

    def fmt(x: float) -> str:
        return f"{int(x)}" if float(x).is_integer() else f"{x:g}"

    labels = [f"<{fmt(edges[0])}"]
    for lo, hi in pairwise(edges):
        labels.append(f"{fmt(lo)}-{fmt(hi - 1)}" if integral else f"{fmt(lo)}-<{fmt(hi)}")
    labels.append(f"{fmt(edges[-1])}+")
    return labels


def declared_groups(c: Contract) -> dict[str, list[str]]:
    """The subgroups of each sensitive attribute as the contract declares them, never as the
    data shows them: the age bands of ``sensitive.age_bands`` and the ``allowed`` values of
    the sex column, each with ``unknown`` (a missing value). A DP-evaluated release publishes
    one histogram per declared subgroup, so which subgroups occur in the test split is not
    revealed (docs/evaluation.md). An attribute whose values the contract does not list is
    left out (its subgroups then come from the data)."""
    out: dict[str, list[str]] = {}
    if c.sensitive.sex:
        spec = c.columns.get(c.sensitive.sex)
        allowed = None if spec is None else spec.allowed
        if allowed is not None:
            out["sex"] = sorted({str(v) for v in allowed} | {"unknown"})
    if c.sensitive.age:
        out["age_band"] = [*age_band_labels(list(c.sensitive.age_bands)), "unknown"]
    return out


def age_bands(age: Any, edges: list[float]) -> Any:
    """Band ages: edges [60, 70, 80] → '<60', '60-69', '70-79', '80+'; missing → 'unknown'."""
    import numpy as np
    import pandas as pd

    labels = age_band_labels(edges)
    values = age.astype("float64").to_numpy()
    idx = np.searchsorted(np.asarray(edges, dtype=float), values, side="right")
    out = np.asarray(labels, dtype=object)[np.clip(idx, 0, len(labels) - 1)]
    out[np.isnan(values)] = "unknown"
    return pd.Series(out, index=age.index, dtype=object)


def _feature_name(name: str, taken: set[str]) -> str:
    out = name if name not in RESERVED_COLUMNS else f"{name}_value"
    while out in taken:
        out += "_"
    taken.add(out)
    return out


def _encode_features(frame: Any, c: Contract, train_mask: Any) -> tuple[Any, list[dict]]:
    """float32 features from training statistics only; the recipe goes into meta.json."""
    import numpy as np
    import pandas as pd

    columns: dict[str, Any] = {}
    encoding: list[dict[str, Any]] = []
    taken: set[str] = set()
    for col in c.feature_columns():
        spec = c.columns[col]
        values = frame[col]
        missing = values.isna().to_numpy()
        step: dict[str, Any] = {"column": col, "type": spec.type}
        if spec.type in ("integer", "float", "boolean"):
            x = values.astype("float64").to_numpy(na_value=np.nan)
            observed = x[train_mask & ~missing]
            if spec.type == "boolean":
                fill = float(np.round(observed.mean())) if observed.size else 0.0
                mean, std = 0.0, 1.0
            else:
                fill = float(np.median(observed)) if observed.size else 0.0
                mean = float(observed.mean()) if observed.size else 0.0
                std = float(observed.std()) if observed.size > 1 else 1.0
                std = std if std > 0 and math.isfinite(std) else 1.0
            x = np.where(np.isnan(x), fill, x)
            out_name = _feature_name(col, taken)
            columns[out_name] = ((x - mean) / std).astype(np.float32)
            step.update(outputs=[out_name], mean=mean, std=std)
            if missing.any() or spec.nullable:
                step["impute"] = {
                    "value": fill,
                    "statistic": "training mode" if spec.type == "boolean" else "training median",
                    "missing_train": int((missing & train_mask).sum()),
                    "missing_test": int((missing & ~train_mask).sum()),
                }
        else:  # string: one-hot
            allowed = spec.allowed_values()
            cats = (
                [str(v) for v in allowed]
                if allowed is not None
                else sorted(pd.unique(values[train_mask & ~missing].astype(str)).tolist())
            )
            if len(cats) > MAX_CATEGORIES:
                raise UsageError(
                    f"feature column {col!r} has {len(cats)} categories (limit "
                    f"{MAX_CATEGORIES}): list the allowed values or leave it out of features"
                )
            text = values.astype(str)
            outs = []
            for cat in cats:
                out_name = _feature_name(f"{col}_{re.sub(r'[^A-Za-z0-9_.-]', '_', cat)}", taken)
                columns[out_name] = ((text == cat) & ~missing).to_numpy().astype(np.float32)
                outs.append(out_name)
            step.update(outputs=outs, categories=cats)
        if spec.nullable:
            ind = _feature_name(f"{col}_missing", taken)
            columns[ind] = missing.astype(np.float32)
            step["outputs"].append(ind)
            step["missing_indicator"] = ind
        encoding.append(step)
    return pd.DataFrame(columns, index=frame.index), encoding


# --- writing ---------------------------------------------------------------------------------


def write_prepared(
    target: Path,
    train: Any,
    test: Any,
    meta: dict[str, Any],
    arrays: dict[str, Any],
    before_commit: Any = None,
) -> str:
    """Write into a temporary sibling folder, hash it, call ``before_commit(version)``, then
    swap it into place. Returns the data version (DVC md5)."""
    import numpy as np

    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"output {parent}: cannot create ({err.strerror or err})") from err
    tmp = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    backup = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        train.to_parquet(tmp / "train.parquet", index=False)
        test.to_parquet(tmp / "test.parquet", index=False)
        for split, arr in arrays.items():
            if split == "files":  # image files a manifest lists: {address: source file}
                copy_images(tmp, arr)
                continue
            np.save(tmp / IMAGE_FILES[split], arr, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        version = compute_md5(tmp)
        if before_commit is not None:
            before_commit(version)
        if target.exists():
            target.rename(backup)
        tmp.rename(target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if backup.exists() and not target.exists():
            backup.rename(target)
        raise UsageError(f"output {target}: cannot write ({err.strerror or err})") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if backup.exists() and not target.exists():
            backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return version
