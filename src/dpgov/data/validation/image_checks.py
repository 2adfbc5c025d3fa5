"""Checks on image files (a manifest's images, as prepared data holds them), run through Great
Expectations like the table checks: every prepared image exists, its bytes still match its
content address (the SHA-256 in its name), it decodes, and its width and height lie within the
contract's ``images.min_size`` / ``max_size``.

The facts are gathered in one pass over the prepared copies (the files training reads), one
row per image, into a table (``image_file``, ``split``, ``exists``, ``content_matches``,
``decodes``, ``height``, ``width``); the expectations then run on that table. Records per
patient, label values and patient ids present are the source table's checks
(:mod:`.gx_suite`, :mod:`.source_checks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpgov.data.contract import Contract
from dpgov.data.image_store import open_image
from dpgov.data.manifest import file_sha256
from dpgov.data.validation.gx_suite import run_suite
from dpgov.data.validation.records import Check

TABLE = "images"


def image_facts(prep: Any) -> Any:
    """One row per prepared image row of both splits (module docstring)."""
    import pandas as pd

    info = prep.meta["images"]
    col = info["column"]
    rows = []
    for split in ("train", "test"):
        for rel in prep.frame(split)[col].tolist():
            path = Path(prep.path) / str(rel)
            row: dict[str, Any] = {
                "image_file": str(rel),
                "split": split,
                "exists": path.is_file(),
                "content_matches": False,
                "decodes": False,
                "height": None,
                "width": None,
            }
            if row["exists"]:
                row["content_matches"] = Path(str(rel)).stem == file_sha256(path)
                try:
                    im = open_image(path)
                    row.update(decodes=True, height=int(im.height), width=int(im.width))
                except Exception:  # UsageError for undecodable files: recorded, not raised
                    pass
            rows.append(row)
    frame = pd.DataFrame(rows)
    for key in ("height", "width"):
        frame[key] = frame[key].astype("Int64")
    return frame


def image_plan(c: Contract) -> list[tuple[str, Any, dict[str, Any]]]:
    assert c.images is not None
    lo, hi = c.images.min_size, c.images.max_size
    plan: list[tuple[str, Any, dict[str, Any]]] = [
        (
            "ExpectColumnValuesToBeInSet",
            {"column": "exists", "value_set": [True]},
            {"rule": "image_exists", "column": "image_file", "name": "every image file exists"},
        ),
        (
            "ExpectColumnValuesToBeInSet",
            {"column": "content_matches", "value_set": [True]},
            {
                "rule": "image_content",
                "column": "image_file",
                "name": "every image's bytes match its content address (SHA-256)",
            },
        ),
        (
            "ExpectColumnValuesToBeInSet",
            {"column": "decodes", "value_set": [True]},
            {"rule": "image_decodes", "column": "image_file", "name": "every image decodes"},
        ),
    ]
    for key in ("height", "width"):
        plan.append(
            (
                "ExpectColumnValuesToNotBeNull",
                {"column": key},
                {"rule": "image_size", "column": key, "name": f"image {key}: known"},
            )
        )
        plan.append(
            (
                "ExpectColumnValuesToBeBetween",
                {"column": key, "min_value": lo, "max_value": hi},
                {
                    "rule": "image_size",
                    "column": key,
                    "name": f"image {key}: within [{lo}, {hi}] pixels",
                },
            )
        )
    return plan


def image_checks(prep: Any, c: Contract, dataset: str) -> list[Check]:
    """The image expectations on the prepared images (empty for data without image files)."""
    info = prep.meta.get("images") or {}
    if c.images is None or info.get("storage") != "files":
        return []
    plan = image_plan(c)
    return run_suite(image_facts(prep), plan, dataset, table=TABLE)
