"""The contract as a Great Expectations suite on the source table (GX 1.x: ephemeral context,
pandas datasource, ExpectationSuite, ValidationDefinition, Checkpoint).

Columns; types; id, label, block, sensitive and non-nullable columns not null; ranges (paired
with not-null, since range expectations skip nulls); allowed sets; one record per patient
(unique id); no identifier-looking values in text columns (matched values are never copied into
results, only their kinds). Great Expectations is imported when a suite runs, not before.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

from dpgov.contracts import json_safe
from dpgov.data.contract import IMAGE_KEY_COLUMNS, Contract
from dpgov.data.identifiers import VALUE_PATTERNS, value_kinds
from dpgov.data.validation.records import GX, Check

# pandas dtypes that satisfy each contract type (names as GX's type-list expectation reads them)
GX_TYPES = {
    "integer": ["int64", "int32", "int16", "int8", "Int64Dtype", "Int32Dtype"],
    "float": ["float64", "float32"],
    "string": ["str"],  # object columns: GX checks each value's Python type
    "boolean": ["bool", "BooleanDtype"],
}


def _text_columns(frame: Any) -> list[str]:
    import pandas as pd

    return [
        col
        for col in frame.columns
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype)
    ]


def plan_expectations(frame: Any, c: Contract) -> list[tuple[str, Any, dict[str, Any]]]:
    """(expectation class name, kwargs, meta) for every GX expectation the contract implies."""
    plan: list[tuple[str, Any, dict[str, Any]]] = []
    expected = list(c.columns)
    if c.kind == "image" and c.images is None:  # .npz images: rows named by split and index
        expected = list(IMAGE_KEY_COLUMNS) + [
            col for col in expected if col not in IMAGE_KEY_COLUMNS
        ]
    plan.append(
        (
            "ExpectTableColumnsToMatchSet",
            {"column_set": expected, "exact_match": not c.allow_extra_columns},
            {
                "rule": "columns",
                "column": None,
                "name": "columns are those of the contract"
                + ("" if c.allow_extra_columns else " (no others)"),
            },
        )
    )
    for col, spec in c.columns.items():
        if col not in frame.columns:
            continue
        plan.append(
            (
                "ExpectColumnValuesToBeInTypeList",
                {"column": col, "type_list": GX_TYPES[spec.type]},
                {"rule": "type", "column": col, "name": f"{col}: type {spec.type}"},
            )
        )
    roles = {
        c.patient_id: "patient id",
        c.label: "label",
        c.block.column: "block",
        c.sensitive.sex: "sensitive",
        c.sensitive.age: "sensitive",
    }
    for col in c.required_columns():
        if col not in frame.columns:
            continue
        why = roles.get(col, "not nullable")
        plan.append(
            (
                "ExpectColumnValuesToNotBeNull",
                {"column": col},
                {"rule": "not_null", "column": col, "name": f"{col}: no missing values ({why})"},
            )
        )
    for col, spec in c.columns.items():
        if col not in frame.columns:
            continue
        if spec.min is not None or spec.max is not None:
            lo = "-∞" if spec.min is None else f"{spec.min:g}"
            hi = "∞" if spec.max is None else f"{spec.max:g}"
            plan.append(
                (
                    "ExpectColumnValuesToBeBetween",
                    {"column": col, "min_value": spec.min, "max_value": spec.max},
                    {"rule": "range", "column": col, "name": f"{col}: within [{lo}, {hi}]"},
                )
            )
        allowed = spec.allowed_values()
        if allowed is not None:
            plan.append(
                (
                    "ExpectColumnValuesToBeInSet",
                    {"column": col, "value_set": allowed},
                    {
                        "rule": "allowed",
                        "column": col,
                        "name": f"{col}: one of {', '.join(map(str, allowed))}",
                    },
                )
            )
    if c.patient_id is not None and c.privacy.max_records_per_patient == 1:
        plan.append(
            (
                "ExpectColumnValuesToBeUnique",
                {"column": c.patient_id},
                {
                    "rule": "records_per_patient",
                    "column": c.patient_id,
                    "name": f"{c.patient_id}: one record per patient (the privacy unit)",
                },
            )
        )
    for col in _text_columns(frame):
        if col == c.patient_id:
            continue  # replaced by a pseudonym in prepared data
        if c.images is not None and col == c.images.path:
            continue  # image paths never reach prepared data: content addresses replace them
        plan.append(
            (
                "ExpectColumnValuesToNotMatchRegexList",
                {"column": col, "regex_list": list(VALUE_PATTERNS.values())},
                {
                    "rule": "identifiers",
                    "column": col,
                    "name": f"{col}: no values that look like direct identifiers",
                },
            )
        )
    return plan


def gx_checks(frame: Any, c: Contract, dataset: str) -> list[Check]:
    return run_suite(frame, plan_expectations(frame, c), dataset)


def run_suite(
    frame: Any,
    plan: list[tuple[str, Any, dict[str, Any]]],
    dataset: str,
    *,
    table: str = "source",
) -> list[Check]:
    """Run the planned expectations on ``frame`` as one GX checkpoint; one Check each."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        ctx.data_sources.add_pandas(f"dpgov-{dataset}")
        .add_dataframe_asset(table)
        .add_batch_definition_whole_dataframe("whole table")
    )
    expectations = [
        getattr(gxe, cls)(**kwargs, meta={**meta, "order": i})
        for i, (cls, kwargs, meta) in enumerate(plan)
    ]
    # built whole, then added once: adding expectations one by one re-serialises the suite
    suite = ctx.suites.add(
        gx.ExpectationSuite(
            name=f"{dataset}-contract" if table == "source" else f"{dataset}-{table}",
            expectations=expectations,
        )
    )
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{dataset}-{table}-validation", data=batch, suite=suite)
    )
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=f"{dataset}-checkpoint",
            validation_definitions=[definition],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    results = [r for vr in run.run_results.values() for r in vr.results]
    results.sort(key=_order)
    return [_from_gx(r, len(frame), table) for r in results]


def _order(r: Any) -> int:
    cfg = r.expectation_config
    return int(((cfg.meta if cfg is not None else None) or {}).get("order", 0))


def _from_gx(r: Any, n: int, table: str = "source") -> Check:
    cfg = r.expectation_config
    meta = dict(cfg.meta or {})
    res = dict(r.result or {})
    rule = meta.get("rule", "")
    exc = getattr(r, "exception_info", None) or {}
    if exc.get("raised_exception"):
        return Check(
            rule=rule,
            name=meta.get("name", cfg.type),
            table=table,
            column=meta.get("column"),
            engine=GX,
            expectation=cfg.type,
            success=False,
            detail=f"the expectation raised: {exc.get('exception_message')}",
        )
    observed: dict[str, Any] = {}
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("column", "batch_id")}
    if "observed_value" in res:
        observed["value"] = json_safe(res["observed_value"])
    if "unexpected_count" in res:
        observed["unexpected"] = int(res["unexpected_count"] or 0)
        observed["unexpected_percent"] = round(float(res.get("unexpected_percent") or 0.0), 4)
        observed["rows"] = int(res.get("element_count") or n)
        if res.get("missing_count") is not None:
            observed["missing"] = int(res["missing_count"])
        rows = [int(i) + 1 for i in (res.get("partial_unexpected_index_list") or [])][:5]
        if rows:
            observed["example_rows"] = rows
        examples = [json_safe(v) for v in res.get("partial_unexpected_list") or []][:5]
        if rule == "identifiers":
            observed["kinds"] = value_kinds([str(v) for v in examples])  # never the values
        elif rule in ("range", "allowed", "type") and examples:
            # a value that looks like an identifier is named, never copied
            observed["examples"] = [
                f"<redacted: looks like {', '.join(kinds)}>"
                if (kinds := value_kinds([v] if isinstance(v, str) else []))
                else v
                for v in examples
            ]
    success = bool(r.success)
    if rule == "identifiers":
        kwargs = {
            "patterns": "e-mail, national id, phone, record number, street address, "
            "exact date, name, ip address"
        }
    detail = ""
    if not success and "unexpected" in observed:
        detail = (
            f"{observed['unexpected']} of {observed['rows']} values "
            f"({observed['unexpected_percent']:.2f}%) break it"
        )
        if observed.get("kinds"):
            detail += f"; they look like: {', '.join(observed['kinds'])}"
    elif not success and rule == "columns":
        expected = set(kwargs.get("column_set", []))
        found = set(observed.get("value") or [])
        extra, missing = sorted(found - expected), sorted(expected - found)
        detail = "; ".join(
            p
            for p in (
                f"not in the contract: {', '.join(extra)}" if extra else "",
                f"missing: {', '.join(missing)}" if missing else "",
            )
            if p
        )
    elif not success and rule == "type":
        detail = f"found dtype {observed.get('value')}"
    return Check(
        rule=rule,
        name=meta.get("name", cfg.type),
        table=table,
        column=meta.get("column"),
        engine=GX,
        expectation=cfg.type,
        success=success,
        observed=observed,
        expected=json_safe(kwargs),
        detail=detail,
    )


def gx_version() -> str:
    try:
        return version("great-expectations")
    except Exception:  # pragma: no cover - installed as a dependency
        return "unknown"
