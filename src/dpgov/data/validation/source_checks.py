"""Checks on the source table that Great Expectations has no expectation for, computed in
pandas (``engine: "pandas"``): the per-patient bound under group privacy, identifier-looking
column names, date/time columns, record-number-like integer columns."""

from __future__ import annotations

from typing import Any

from dpgov.data.contract import IMAGE_KEY_COLUMNS, Contract
from dpgov.data.identifiers import column_name_kind
from dpgov.data.validation.records import PANDAS, PANDAS_NOTE, Check


def pandas_source_checks(frame: Any, c: Contract) -> list[Check]:
    import pandas as pd

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
