"""Validation: the data contract as a Great Expectations suite, plus the checks GX has no
expectation for, computed in pandas and recorded in the same format (``engine: "pandas"``).

On the source table (as the contract describes it), with Great Expectations 1.x (ephemeral
context, pandas datasource, ExpectationSuite, ValidationDefinition, Checkpoint):
columns; types; id, label, block, sensitive and non-nullable columns not null; ranges (paired
with not-null, since range expectations skip nulls); allowed sets; one record per patient
(unique id); no identifier-looking values in text columns.
In pandas: identifier-looking column names, date/time columns, record-number-like integer
columns, the per-patient bound under group privacy.
On the prepared output, in pandas: train and test patients disjoint, every patient in one block,
minimum patients per block and per subgroup (each sensitive attribute, each split), δ of the
policy below 1/(number of patients), pseudonymous ids, finite features, both label classes.

Results go to ``data/validation/<dataset>/result.json`` and ``summary.md``. The command line
exits 1 when a check fails; nothing is reserved or charged either way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from dpgov.data.contract import IMAGE_KEY_COLUMNS, Contract, LoadedContract, load_contract
from dpgov.data.params import DataParams
from dpgov.errors import UsageError

VALIDATION_ROOT = Path("data/validation")
GX: Final = "great_expectations"
PANDAS: Final = "pandas"
PANDAS_NOTE = "computed in pandas: Great Expectations has no expectation for this"

# pandas dtypes that satisfy each contract type (names as GX's type-list expectation reads them)
GX_TYPES = {
    "integer": ["int64", "int32", "int16", "int8", "Int64Dtype", "Int32Dtype"],
    "float": ["float64", "float32"],
    "string": ["str"],  # object columns: GX checks each value's Python type
    "boolean": ["bool", "BooleanDtype"],
}


@dataclass
class Check:
    """One check's outcome, whatever computed it."""

    rule: str  # columns, type, not_null, range, allowed, records_per_patient, identifiers, ...
    name: str  # one readable line
    table: str  # source, train, test, prepared, policy
    column: str | None
    engine: Literal["great_expectations", "pandas"]
    expectation: str | None  # the GX expectation type, or what pandas computed
    success: bool
    observed: Any = None
    expected: Any = None
    detail: str = ""
    severity: Literal["error", "warning"] = "error"

    @property
    def failed(self) -> bool:
        return not self.success and self.severity == "error"


@dataclass
class ValidationResult:
    dataset: str
    ok: bool
    checks: list[Check]
    data_version: str | None
    source: dict[str, Any]
    contract: dict[str, Any]
    policy: dict[str, Any]
    prepared: str
    great_expectations: str
    validated_at: str
    seconds: float
    result_file: str | None = None
    summary_file: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checks_total"] = len(self.checks)
        out["checks_failed"] = len(self.failed)
        out["checks_by_engine"] = {
            e: sum(1 for c in self.checks if c.engine == e) for e in (GX, PANDAS)
        }
        out["note"] = f"checks with engine 'pandas' are {PANDAS_NOTE}"
        return out

    def summary_markdown(self) -> str:
        return _summary(self)


# --- entry point -----------------------------------------------------------------------------


def validate(
    source: str | Path | None = None,
    contract: str | Path | LoadedContract | None = None,
    *,
    dataset: str | None = None,
    prepared: str | Path | None = None,
    metadata: str | Path | None = None,
    policy: str | Path | None = None,
    out: str | Path | None = None,
    params: DataParams | None = None,
    write: bool = True,
) -> ValidationResult:
    """Validate ``source`` and its prepared output against the contract and the policy's δ.

    Raises UsageError for unusable input (exit 2); a failing check only sets ``ok`` false.
    """
    from dpgov.data.prepared import load_prepared
    from dpgov.data.sources import load_source
    from dpgov.policy import load_policy

    started = time.perf_counter()
    timings: dict[str, float] = {}
    params = params or DataParams()
    loaded = contract if isinstance(contract, LoadedContract) else load_contract(contract)
    c = loaded.contract
    name = dataset or c.dataset
    pol = load_policy(policy)
    delta = float(pol.policy.budget.delta)

    t = time.perf_counter()
    src = load_source(source, c, metadata=metadata, horizon_years=params.horizon_years)
    timings["load_source"] = time.perf_counter() - t
    folder = Path(prepared) if prepared is not None else Path("data/prepared") / name
    t = time.perf_counter()
    prep = load_prepared(folder)
    timings["load_prepared"] = time.perf_counter() - t
    made_from = prep.meta.get("source", {}).get("sha256")
    if made_from != src.sha256:
        raise UsageError(
            f"prepared data {folder} was made from other data than {src.name} (source sha256 "
            f"{str(made_from)[:12]}…, now {src.sha256[:12]}…): run `dpgov data prepare` again"
        )
    if prep.meta.get("contract", {}).get("sha256") != loaded.sha256:
        raise UsageError(
            f"prepared data {folder} was made under another contract than {loaded.path}: run "
            f"`dpgov data prepare` again"
        )

    t = time.perf_counter()
    checks = contract_checks(src.frame, c, dataset=name)
    timings["source_checks"] = time.perf_counter() - t
    t = time.perf_counter()
    checks += prepared_checks(prep, c, delta=delta, images=src.images is not None)
    timings["prepared_checks"] = time.perf_counter() - t

    result = ValidationResult(
        dataset=name,
        ok=not any(ch.failed for ch in checks),
        checks=checks,
        data_version=prep.meta.get("data_version"),
        source={"name": src.name, "sha256": src.sha256, "rows": len(src.frame)},
        contract={"path": loaded.path, "sha256": loaded.sha256},
        policy={"path": str(pol.path), "sha256": pol.sha256, "delta": delta},
        prepared=str(folder),
        great_expectations=_gx_version(),
        validated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        seconds=0.0,
        timings=timings,
    )
    result.seconds = round(time.perf_counter() - started, 3)
    if write:
        target = Path(out) if out is not None else VALIDATION_ROOT / name
        _write(result, target)
    return result


# --- checks on the source table --------------------------------------------------------------


def contract_checks(frame: Any, c: Contract, *, dataset: str = "data") -> list[Check]:
    """Every contract rule on the source table: a GX suite plus the pandas-computed checks."""
    return _gx_checks(frame, c, dataset) + _pandas_source_checks(frame, c)


def _text_columns(frame: Any) -> list[str]:
    import pandas as pd

    return [
        col
        for col in frame.columns
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype)
    ]


def _plan(frame: Any, c: Contract) -> list[tuple[str, Any, dict[str, Any]]]:
    """(expectation class name, kwargs, meta) for every GX expectation the contract implies."""
    from dpgov.data.identifiers import VALUE_PATTERNS

    plan: list[tuple[str, Any, dict[str, Any]]] = []
    expected = list(c.columns)
    if c.kind == "image":
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


def _gx_checks(frame: Any, c: Contract, dataset: str) -> list[Check]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    plan = _plan(frame, c)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        ctx.data_sources.add_pandas(f"dpgov-{dataset}")
        .add_dataframe_asset("source")
        .add_batch_definition_whole_dataframe("whole table")
    )
    expectations = [
        getattr(gxe, cls)(**kwargs, meta={**meta, "order": i})
        for i, (cls, kwargs, meta) in enumerate(plan)
    ]
    # built whole, then added once: adding expectations one by one re-serialises the suite
    suite = ctx.suites.add(
        gx.ExpectationSuite(name=f"{dataset}-contract", expectations=expectations)
    )
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{dataset}-source", data=batch, suite=suite)
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
    return [_from_gx(r, len(frame)) for r in results]


def _order(r: Any) -> int:
    cfg = r.expectation_config
    return int(((cfg.meta if cfg is not None else None) or {}).get("order", 0))


def _from_gx(r: Any, n: int) -> Check:
    from dpgov.data.identifiers import value_kinds

    cfg = r.expectation_config
    meta = dict(cfg.meta or {})
    res = dict(r.result or {})
    rule = meta.get("rule", "")
    exc = getattr(r, "exception_info", None) or {}
    if exc.get("raised_exception"):
        return Check(
            rule=rule,
            name=meta.get("name", cfg.type),
            table="source",
            column=meta.get("column"),
            engine=GX,
            expectation=cfg.type,
            success=False,
            detail=f"the expectation raised: {exc.get('exception_message')}",
        )
    observed: dict[str, Any] = {}
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("column", "batch_id")}
    if "observed_value" in res:
        observed["value"] = _plain(res["observed_value"])
    if "unexpected_count" in res:
        observed["unexpected"] = int(res["unexpected_count"] or 0)
        observed["unexpected_percent"] = round(float(res.get("unexpected_percent") or 0.0), 4)
        observed["rows"] = int(res.get("element_count") or n)
        if res.get("missing_count") is not None:
            observed["missing"] = int(res["missing_count"])
        rows = [int(i) + 1 for i in (res.get("partial_unexpected_index_list") or [])][:5]
        if rows:
            observed["example_rows"] = rows
        examples = [_plain(v) for v in res.get("partial_unexpected_list") or []][:5]
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
        table="source",
        column=meta.get("column"),
        engine=GX,
        expectation=cfg.type,
        success=success,
        observed=observed,
        expected=_plain(kwargs),
        detail=detail,
    )


def _pandas_source_checks(frame: Any, c: Contract) -> list[Check]:
    import pandas as pd

    from dpgov.data.identifiers import column_name_kind

    checks: list[Check] = []
    # records per patient under a declared bound (GX has no per-value count bound)
    if c.patient_id is not None and c.privacy.max_records_per_patient > 1:
        counts = frame[c.patient_id].value_counts()
        worst = int(counts.max()) if len(counts) else 0
        over = int((counts > c.privacy.max_records_per_patient).sum())
        checks.append(
            Check(
                rule="records_per_patient",
                table="source",
                column=c.patient_id,
                engine=PANDAS,
                expectation=f"{PANDAS_NOTE} (max records per patient)",
                name=f"{c.patient_id}: at most {c.privacy.max_records_per_patient} records per "
                f"patient (group privacy declared)",
                success=over == 0,
                observed={"max_records": worst, "patients_over": over},
                expected={"max_records_per_patient": c.privacy.max_records_per_patient},
                detail="" if over == 0 else f"{over} patients exceed the bound (worst: {worst})",
            )
        )
    if c.kind == "image" and (c.patient_id is None or c.patient_id not in frame.columns):
        checks.append(
            Check(
                rule="records_per_patient",
                table="source",
                column=None,
                engine=PANDAS,
                expectation=PANDAS_NOTE,
                severity="warning",
                success=False,
                name="one record per patient: no patient id, each image counted as one patient",
                detail="assumed, not verifiable: give patient ids in the metadata to check it",
            )
        )
    # identifier-looking column names
    flagged = {col: column_name_kind(col) for col in frame.columns if col != c.patient_id}
    flagged = {col: kind for col, kind in flagged.items() if kind}
    checks.append(
        Check(
            rule="identifiers",
            table="source",
            column=None,
            engine=PANDAS,
            expectation=f"{PANDAS_NOTE} (column names)",
            name="no column name looks like a direct identifier",
            success=not flagged,
            observed={"flagged": [{"column": k, "looks_like": v} for k, v in flagged.items()]},
            detail="; ".join(f"{k!r} looks like a {v}" for k, v in flagged.items()),
        )
    )
    # date/time columns: exact dates (of birth, of visits) are identifying
    dated = [col for col in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[col].dtype)]
    checks.append(
        Check(
            rule="identifiers",
            table="source",
            column=None,
            engine=PANDAS,
            expectation=f"{PANDAS_NOTE} (date/time columns)",
            name="no exact-date columns (dates of birth and the like)",
            success=not dated,
            observed={"flagged": dated},
            detail=""
            if not dated
            else f"date/time columns: {', '.join(dated)}; keep the year or an age instead",
        )
    )
    # integer columns that behave like record numbers: all distinct, 4+ digits
    roles = {c.patient_id, c.block.column, c.label, *IMAGE_KEY_COLUMNS}
    numbered = []
    for col in frame.columns:
        s = frame[col]
        if col in roles or not pd.api.types.is_integer_dtype(s.dtype) or len(s) < 100:
            continue
        vals = s.dropna()
        if len(vals) == len(s) and vals.is_unique and int(vals.abs().min()) >= 1000:
            numbered.append(col)
    checks.append(
        Check(
            rule="identifiers",
            table="source",
            column=None,
            engine=PANDAS,
            expectation=f"{PANDAS_NOTE} (unique 4+ digit integer columns)",
            name="no integer column looks like a record number",
            success=not numbered,
            observed={"flagged": numbered},
            detail=""
            if not numbered
            else f"all values distinct with 4+ digits: {', '.join(numbered)}",
        )
    )
    return checks


# --- checks on the prepared output -----------------------------------------------------------


def prepared_checks(prep: Any, c: Contract, *, delta: float, images: bool = False) -> list[Check]:
    """Checks that need the split and the blocks: computed in pandas."""
    import numpy as np
    import pandas as pd

    from dpgov.data.pseudonym import PSEUDONYM_PATTERN

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
    else:
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


# --- output ----------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    """JSON-ready values (numpy scalars, NaN)."""
    import numpy as np

    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _gx_version() -> str:
    from importlib.metadata import version

    try:
        return version("great-expectations")
    except Exception:  # pragma: no cover - installed as a dependency
        return "unknown"


def _write(result: ValidationResult, target: Path) -> None:
    """result.json and summary.md, written together (temporary folder, then rename)."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"output {parent}: cannot create ({err.strerror or err})") from err
    result.result_file = str(target / "result.json")
    result.summary_file = str(target / "summary.md")
    tmp = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        (tmp / "result.json").write_text(json.dumps(_plain(result.to_dict()), indent=2) + "\n")
        (tmp / "summary.md").write_text(result.summary_markdown())
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)
        raise UsageError(f"output {target}: cannot write ({err.strerror or err})") from err
    shutil.rmtree(old, ignore_errors=True)


def _summary(r: ValidationResult) -> str:
    failed = r.failed
    warnings = [c for c in r.checks if c.severity == "warning" and not c.success]
    by_engine = {e: sum(1 for c in r.checks if c.engine == e) for e in (GX, PANDAS)}
    lines = [
        f"# Validation of {r.dataset}: {'PASSED' if r.ok else 'FAILED'}",
        "",
        f"- data version: `{r.data_version}` (prepared at `{r.prepared}`)",
        f"- source: `{r.source['name']}` ({r.source['rows']} rows), contract: "
        f"`{r.contract['path']}`",
        f"- policy: `{r.policy['path']}` (δ = {r.policy['delta']:g})",
        f"- {len(r.checks)} checks, {len(failed)} failed, {len(warnings)} warnings; "
        f"Great Expectations {r.great_expectations} ran {by_engine[GX]}, pandas computed "
        f"{by_engine[PANDAS]} (no GX expectation exists for them)",
        f"- validated at {r.validated_at} in {r.seconds:.1f} s",
        "",
    ]
    if failed:
        lines += ["## Failed", ""]
        lines += [f"- [{c.table}] {c.name}: {c.detail or 'failed'} ({c.engine})" for c in failed]
        lines.append("")
    if warnings:
        lines += ["## Warnings", ""]
        lines += [f"- [{c.table}] {c.name}: {c.detail}" for c in warnings]
        lines.append("")
    lines += ["## Checks by rule", "", "| rule | checks | failed | engine |", "|---|---|---|---|"]
    rules: dict[str, list[Check]] = {}
    for c in r.checks:
        rules.setdefault(c.rule, []).append(c)
    for rule, cs in rules.items():
        engines = ", ".join(sorted({c.engine for c in cs}))
        lines.append(f"| {rule} | {len(cs)} | {sum(c.failed for c in cs)} | {engines} |")
    return "\n".join(lines) + "\n"
