"""Properties of the data layer (hypothesis): splits keep patients whole, grouped blocks are
contiguous and big enough, hostile cells and contracts give UsageError or a result, never a
crash."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpgov.data.contract import Contract, parse_contract
from dpgov.data.preparation import _group_adjacent, _split_patients
from dpgov.data.pseudonym import pseudonymise
from dpgov.data.sources import coerce_table
from dpgov.errors import UsageError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

records = st.lists(
    st.tuples(st.integers(0, 30), st.integers(2000, 2004), st.integers(0, 1)),
    min_size=1,
    max_size=120,
)


def _frame(rows):
    df = pd.DataFrame(rows, columns=["pid", "year", "label"])
    # one block per patient (the first seen), as a contract-abiding source has
    df["year"] = df.groupby("pid")["year"].transform("first")
    return df


@FAST
@given(records, st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_split_keeps_each_patient_whole_and_is_deterministic(rows, fraction, seed) -> None:
    df = _frame(rows)
    pid = df["pid"].astype(str)
    a = _split_patients(pid, df["year"], df["label"], fraction, seed)
    b = _split_patients(pid, df["year"], df["label"], fraction, seed)
    assert (a == b).all()
    per_patient = pd.Series(a).groupby(pid.to_numpy()).nunique()
    assert (per_patient == 1).all()


@FAST
@given(records, st.floats(0.05, 0.95))
def test_split_takes_the_rounded_share_of_each_stratum(rows, fraction) -> None:
    df = _frame(rows)
    pid = df["pid"].astype(str)
    test = _split_patients(pid, df["year"], df["label"], fraction, 0)
    patients = (
        df.assign(test=test)
        .groupby("pid")
        .agg(year=("year", "first"), label=("label", "max"), test=("test", "first"))
    )
    for _, g in patients.groupby(["year", "label"]):
        assert int(g["test"].sum()) == math.floor(fraction * len(g) + 0.5)


@FAST
@given(st.lists(st.integers(0, 400), min_size=1, max_size=12), st.integers(1, 500))
def test_grouped_blocks_are_contiguous_and_big_enough(counts, minimum) -> None:
    years = np.repeat(np.arange(2000, 2000 + len(counts)), [max(c, 1) for c in counts])
    raw = pd.Series(years)
    pid = pd.Series([f"p{i}" for i in range(len(years))])
    is_test = np.zeros(len(years), dtype=bool)
    block, grouped = _group_adjacent(raw, pid, is_test, minimum)
    members = [v for g in grouped.values() for v in g]
    assert members == sorted(set(years.tolist()))  # each year once, in order
    sizes = pd.Series(pid.to_numpy()).groupby(block.to_numpy()).nunique()
    if len(grouped) > 1:
        assert (sizes >= minimum).all()
    for name, g in grouped.items():
        assert name == (str(g[0]) if len(g) == 1 else f"{g[0]}-{g[-1]}")


@FAST
@given(
    st.lists(
        st.one_of(st.text(max_size=6), st.none(), st.floats(allow_nan=True)),
        min_size=1,
        max_size=20,
    )
)
def test_hostile_cells_give_a_usage_error_or_typed_values(cells) -> None:
    contract = Contract.model_validate(
        {
            "version": 1,
            "dataset": "h",
            "patient_id": "id",
            "label": "y",
            "block": {"constant": "all"},
            "columns": {
                "id": {"type": "string"},
                "y": {"type": "integer"},
                "x": {"type": "float", "nullable": True},
                "b": {"type": "boolean", "nullable": True},
            },
        }
    )
    n = len(cells)
    frame = pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "y": [0] * n,
            "x": pd.Series(cells, dtype=object),
            "b": pd.Series(cells, dtype=object),
        }
    )
    try:
        out = coerce_table(frame, contract, "fuzz.csv")
    except UsageError as err:
        assert str(err).startswith("data fuzz.csv: column ")
    else:
        assert out["x"].dtype == np.float64


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5))
contract_like = st.recursive(
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "dataset",
                "kind",
                "label",
                "patient_id",
                "block",
                "columns",
                "privacy",
                "minimum",
                "type",
                "column",
                "age",
                "x",
                "nullable",
                "min",
                "max",
            ]
        ),
        scalars,
        max_size=6,
    ),
    lambda inner: st.dictionaries(
        st.sampled_from(["columns", "block", "x", "sensitive", "privacy", "label"]),
        inner,
        max_size=4,
    ),
    max_leaves=12,
)


@FAST
@given(contract_like)
def test_any_contract_yaml_gives_a_contract_or_one_line(data) -> None:
    try:
        parse_contract(yaml.safe_dump(data), "fuzz.yaml")
    except UsageError as err:
        assert str(err).startswith("contract fuzz.yaml: ") and "\n" not in str(err)


@FAST
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=50))
def test_pseudonyms_are_a_function_of_the_id(ids) -> None:
    s = pd.Series(ids, dtype=object)
    out = pseudonymise("d", s)
    assert out.nunique() == s.nunique()
    assert (pseudonymise("d", s) == out).all()
    assert out.str.fullmatch(r"[0-9a-f]{20}").all()
