"""Properties of the data layer (hypothesis): splits keep patients whole and are a function of
each patient alone, fixed blocks hold the values of their range whatever the counts, hostile
cells and contracts give UsageError or a result, never a crash."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpgov.data.contract import Contract, parse_contract
from dpgov.data.preparation import block_ranges, fixed_blocks, split_patients
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


KEY = b"a property-test key"


@FAST
@given(records, st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_split_keeps_each_patient_whole_and_is_deterministic(rows, fraction, seed) -> None:
    df = _frame(rows)
    pid = df["pid"].astype(str)
    a = split_patients(pid, fraction, seed, key=KEY)
    b = split_patients(pid, fraction, seed, key=KEY)
    assert (a == b).all()
    per_patient = pd.Series(a).groupby(pid.to_numpy()).nunique()
    assert (per_patient == 1).all()


@FAST
@given(records, st.data(), st.floats(0.05, 0.95))
def test_split_of_a_patient_ignores_every_other_patient(rows, data, fraction) -> None:
    """Removing any set of patients (or adding them) changes no other patient's split."""
    df = _frame(rows)
    pid = df["pid"].astype(str)
    full = dict(zip(pid, split_patients(pid, fraction, 0, key=KEY), strict=True))
    kept = data.draw(st.sets(st.sampled_from(sorted(set(pid)))))
    sub = pid[pid.isin(kept)]
    part = split_patients(sub, fraction, 0, key=KEY)
    assert part.tolist() == [full[p] for p in sub]


def test_split_share_is_the_fraction_on_average() -> None:
    pid = pd.Series([f"p{i}" for i in range(20000)])
    share = float(split_patients(pid, 0.2, 0, key=KEY).mean())
    assert abs(share - 0.2) < 5 * math.sqrt(0.2 * 0.8 / 20000)


@FAST
@given(
    st.lists(st.integers(1995, 2010), min_size=1, max_size=60),
    st.sets(st.integers(1996, 2010), min_size=1, max_size=6),
)
def test_fixed_blocks_hold_the_values_of_their_range_whatever_the_counts(years, edges) -> None:
    contract = Contract.model_validate(
        {
            "version": 1,
            "dataset": "h",
            "patient_id": "id",
            "label": "y",
            "block": {"column": "yr", "edges": sorted(edges)},
            "columns": {
                "id": {"type": "string"},
                "y": {"type": "integer"},
                "yr": {"type": "integer", "min": 1995, "max": 2010},
            },
        }
    )
    ranges = block_ranges(contract)
    assert [r[1] for r in ranges] == [1995, *sorted(edges)]
    block, grouped = fixed_blocks(pd.Series(years), ranges, "p")
    for year, name in zip(years, block, strict=True):
        (lo, hi) = next((a, b) for n, a, b in ranges if n == name)
        assert lo <= year <= hi
        assert name == (str(lo) if lo == hi else f"{lo}-{hi}")
    # one value more or less changes no other value's block
    alone, _ = fixed_blocks(pd.Series(years[:1]), ranges, "p")
    assert alone.iloc[0] == block.iloc[0]
    assert sorted(v for g in grouped.values() for v in g) == sorted(set(years))


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
