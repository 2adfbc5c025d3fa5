"""The gate's own check of who approves (dpgov.gate.approvals.check_approver): the name rule
holds for every caller (the Prefect approval flow too), not only behind the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from gate_factories import facts, policy

from dpgov.errors import UsageError
from dpgov.gate.approvals import check_approver
from dpgov.policy import LoadedPolicy


def loaded(**sections: object) -> LoadedPolicy:
    return LoadedPolicy(policy=policy(**sections), path=Path("p.yaml"), sha256="0" * 64)


@pytest.mark.parametrize(
    ("by", "why"),
    [
        ("root\u200b", "U+200B ZERO WIDTH SPACE"),  # zero-width
        ("root\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),  # bidirectional override
        ("ro\x07ot", "a control character"),
        ("ｒｏｏｔ", "NFKC"),  # full-width letters
        ("Root", "case folding"),
        ("ana lima", "holds ' '"),
        ("", "empty"),
        ("a" * 65, "65 characters"),
    ],
)
def test_an_approver_outside_the_name_rule_is_refused(by: str, why: str) -> None:
    with pytest.raises(UsageError, match=r"^--by") as err:
        check_approver("approval", by, loaded(), facts())
    assert why in str(err.value) and "\n" not in str(err.value)


def test_an_approver_on_the_list_with_an_invisible_twin_is_not_that_approver() -> None:
    pol = loaded(approvals={"approvers": ["root", "carol"]})
    assert check_approver("approval", "root", pol, facts()) == "root"
    with pytest.raises(UsageError, match="ZERO WIDTH"):
        check_approver("approval", "root\u200b", pol, facts())
