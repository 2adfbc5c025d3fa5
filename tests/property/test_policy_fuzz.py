"""Policy files fuzzed: each is accepted, or rejected with one UsageError line; never a crash."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpgov.errors import UsageError
from dpgov.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            0,
            1,
            -1,
            0.5,
            1.5,
            1e-5,
            1e-300,
            100,
            101,
            "pld",
            "interval",
            "champion",
            "latest",
            "v1",
            "sex",
            "",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    return out


def _set(obj: dict, path: tuple, value: Any) -> dict:
    if not path:
        return value
    copy = dict(obj)
    head, *rest = path
    copy[head] = (
        _set(copy.get(head, {}) if isinstance(copy.get(head), dict) else {}, tuple(rest), value)
        if rest
        else value
    )
    return copy


@st.composite
def mutated_policies(draw: st.DrawFn) -> Any:
    data: Any = DEFAULT
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(data) if isinstance(data, dict) else [()]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "add", "delete"]))
        if action == "delete" and path and isinstance(data, dict):
            parent = _paths(data)
            data = _delete(data, path) if path in parent else data
        elif action == "add" and isinstance(data, dict):
            key = draw(
                st.one_of(
                    st.text(min_size=1, max_size=12),
                    st.sampled_from(["extra", "max_gap", "approver", "alias", "budget"]),
                )
            )
            data = _set(data, (*path, key), draw(values))
        else:
            data = _set(data, path, draw(values)) if path else draw(values)
    return data


def _delete(obj: dict, path: tuple) -> dict:
    copy = dict(obj)
    if len(path) == 1:
        copy.pop(path[0], None)
    elif isinstance(copy.get(path[0]), dict):
        copy[path[0]] = _delete(copy[path[0]], path[1:])
    return copy


def _check(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        try:
            loaded = load_policy(path)
        except UsageError as err:
            message = str(err)
            assert message.startswith(f"policy {path}: "), message
            assert "\n" not in message and "\r" not in message
            return
        assert isinstance(loaded.policy, Policy)
        _assert_sane(loaded.policy)


def _assert_sane(p: Policy) -> None:
    """What an accepted policy promises the ledger and the gate."""
    assert 0 < p.budget.epsilon_per_block <= 100 and 0 < p.budget.delta < 1
    assert 0 < p.release_max_epsilon() <= 100 and 0 < p.release_max_delta() < 1
    for x in (
        p.utility.min_auroc,
        p.utility.max_calibration_error,
        p.fairness.max_auroc_gap,
        p.fairness.max_fnr_gap,
        p.fairness.max_auroc_gap_widening,
        p.fairness.max_fnr_gap_widening,
    ):
        assert x is None or (math.isfinite(x) and 0 <= x <= 1)
    assert p.fairness.min_group_size >= 1
    assert p.approvals.approvers is None or len(p.approvals.approvers) >= p.approvals.required


@FUZZ
@given(mutated_policies())
def test_mutated_policy_is_accepted_or_refused_with_one_line(data):
    _check(yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_is_accepted_or_refused_with_one_line(text):
    _check(text)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_accepted_or_refused_with_one_line(raw):
    _check(raw)


@FUZZ
@given(
    eps=st.floats(min_value=1e-3, max_value=100),
    delta=st.floats(min_value=1e-12, max_value=0.5),
    floor=st.floats(min_value=0, max_value=1),
    gap=st.one_of(st.none(), st.floats(0, 1)),
    required=st.integers(0, 3),
    extra=st.integers(0, 2),
    judge=st.sampled_from(["point", "interval"]),
    min_n=st.integers(1, 10**6),
)
def test_valid_policies_are_accepted(eps, delta, floor, gap, required, extra, judge, min_n):
    data = {
        "version": 1,
        "budget": {"epsilon_per_block": eps, "delta": delta, "accountant": "rdp"},
        "release": {"max_epsilon": eps, "alias": "prod"},
        "utility": {"min_auroc": floor, "judge_on": judge},
        "fairness": {"max_fnr_gap": gap, "judge_on": judge, "min_group_size": min_n},
        "approvals": {
            "required": required,
            "approvers": [f"approver-{i}" for i in range(required + extra)],
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(data))
        p = load_policy(path).policy
    assert p.utility.min_auroc == floor and p.approvals.required == required


def test_deeply_nested_yaml_is_refused_with_one_line():
    _check("budget: " + "[" * 5000 + "]" * 5000)
