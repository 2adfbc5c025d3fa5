"""Checks on the prepared output, computed in pandas: train and test patients disjoint, every
patient in one block, minimum patients per block and per subgroup (each sensitive attribute,
each split), the policy's δ below 1/(number of patients), pseudonymous ids, both label classes,
finite features or usable images."""

from __future__ import annotations

from typing import Any

from dpgov.data.contract import Contract
from dpgov.data.pseudonym import PSEUDONYM_PATTERN
from dpgov.data.validation.records import PANDAS, PANDAS_NOTE, Check


def prepared_checks(prep: Any, c: Contract, *, delta: float, images: bool = False) -> list[Check]:
    """Checks that need the split and the blocks: computed in pandas."""
    import numpy as np
    import pandas as pd

    checks: list[Check] = []
    train, test = prep.train, prep.test
    both = pd.concat([train.assign(_split="train"), test.assign(_split="test")], ignore_index=True)

    def add(
        rule: str,
        name: str,
        success: bool,
        observed: Any,
        expected: Any,
        detail: str = "",
        table: str = "prepared",
        column: str | None = None,
        what: str = "",
    ) -> None:
        checks.append(
            Check(
                rule=rule,
                name=name,
                table=table,
                column=column,
                engine=PANDAS,
                expectation=f"{PANDAS_NOTE}{f' ({what})' if what else ''}",
                success=bool(success),
                observed=observed,
                expected=expected,
                detail=detail,
            )
        )

    # object arrays: pandas' hash-table isin (the Arrow string path builds Python lists)
    test_ids = test["patient_id"].astype(object)
    in_train = test_ids.isin(train["patient_id"].astype(object).to_numpy())
    shared = int(test_ids[in_train].nunique())
    add(
        "disjoint_split",
        "train and test hold different patients",
        not shared,
        {"shared_patients": shared},
        {"shared_patients": 0},
        "" if not shared else f"{shared} patients are in both splits",
        what="patients in both splits",
    )
    pairs = both[["patient_id", "block"]].drop_duplicates()
    straddle = int(pairs["patient_id"].duplicated().sum())
    add(
        "disjoint_blocks",
        "every patient belongs to one block",
        straddle == 0,
        {"patients_in_several_blocks": straddle},
        {"patients_in_several_blocks": 0},
        "" if not straddle else f"{straddle} patients have records in several blocks",
        what="blocks per patient",
    )
    minimum = c.minimum.patients_per_block
    for block, n in sorted(prep.meta["blocks"].items()):
        add(
            "patients_per_block",
            f"block {block}: at least {minimum} training patients",
            n >= minimum,
            {"patients": n},
            {"min": minimum},
            "" if n >= minimum else f"{n} training patients, {minimum - n} short",
            table="train",
            column="block",
            what="distinct patients per block",
        )
    sub_min = c.minimum.patients_per_subgroup
    for attr in prep.meta["sensitive"]:
        for split, frame in (("train", train), ("test", test)):
            counts = frame.groupby(attr)["patient_id"].nunique()
            for group, n in sorted(counts.items()):
                add(
                    "patients_per_subgroup",
                    f"{split} {attr}={group}: at least {sub_min} patients",
                    n >= sub_min,
                    {"patients": int(n)},
                    {"min": sub_min},
                    "" if n >= sub_min else f"{int(n)} patients, {sub_min - int(n)} short",
                    table=split,
                    column=attr,
                    what="distinct patients per subgroup",
                )
    if not prep.meta["sensitive"]:
        checks.append(
            Check(
                rule="patients_per_subgroup",
                table="prepared",
                column=None,
                engine=PANDAS,
                expectation=PANDAS_NOTE,
                success=False,
                severity="warning",
                name="subgroups: no sensitive attributes declared",
                detail="fairness across subgroups cannot be evaluated",
            )
        )
    n_patients = int(both["patient_id"].nunique())
    bound = 1.0 / n_patients if n_patients else 0.0
    add(
        "delta",
        f"policy δ below 1/(number of patients) = 1/{n_patients}",
        delta < bound,
        {"delta": delta, "patients": n_patients, "one_over_n": bound},
        {"delta_below": bound},
        ""
        if delta < bound
        else f"δ={delta:g} is not below 1/{n_patients}={bound:.3g}: a "
        "mechanism could then reveal a whole record with probability δ",
        table="policy",
        what="δ against 1/n",
    )
    ids = both["patient_id"].astype(str)
    plain = int((~ids.str.match(PSEUDONYM_PATTERN)).sum())
    add(
        "pseudonymous_ids",
        "patient ids are pseudonyms (keyed hashes)",
        plain == 0,
        {"not_pseudonyms": plain},
        {"pattern": PSEUDONYM_PATTERN},
        "" if not plain else f"{plain} ids are not keyed hashes",
        column="patient_id",
        what="id format",
    )
    labels = set(pd.unique(both["label"]).tolist())
    classes = {
        s: sorted(set(pd.unique(f["label"]).tolist()))
        for s, f in (("train", train), ("test", test))
    }
    ok_labels = labels <= {0, 1} and all(v == [0, 1] for v in classes.values())
    add(
        "label_classes",
        "labels are 0/1 and both classes occur in train and test",
        ok_labels,
        classes,
        [0, 1],
        "" if ok_labels else f"classes found: {classes}",
        column="label",
        what="label classes per split",
    )
    if prep.kind == "tabular":
        bad = {}
        for split, frame in (("train", train), ("test", test)):
            x = frame[prep.meta["features"]].to_numpy(dtype=np.float64)
            bad[split] = int((~np.isfinite(x)).sum())
        add(
            "finite_features",
            "features are finite numbers (no NaN or infinity)",
            not any(bad.values()),
            {"non_finite": bad},
            {"non_finite": 0},
            "" if not any(bad.values()) else f"non-finite values: {bad}",
            what="non-finite feature values",
        )
    elif (prep.meta.get("images") or {}).get("storage") != "files":  # files: image_checks.py
        info = prep.meta["images"]
        problems = {}
        for split in ("train", "test"):
            arr = np.load(prep.path / info["files"][split], mmap_mode="r")
            if np.issubdtype(arr.dtype, np.floating):
                x = np.asarray(arr, dtype=np.float64)
                if not np.isfinite(x).all():
                    problems[split] = "NaN or infinite pixels"
                elif x.min() < 0 or x.max() * float(info.get("scale", 1.0)) > 1.0 + 1e-6:
                    problems[split] = (
                        f"pixels in [{x.min():g}, {x.max():g}], expected [0, 1] for float images"
                    )
            idx = prep.frame(split)[info["index_column"]]
            if len(idx) and (idx.min() < 0 or idx.max() >= len(arr)):
                problems[split] = "image_index outside the image array"
        add(
            "images",
            "images are finite, in range, and every row has its image",
            not problems,
            {"problems": problems},
            {"problems": {}},
            "; ".join(f"{k}: {v}" for k, v in problems.items()),
            what="pixel checks",
        )
    return checks
