"""The gate's own check of who approves (dpgov.gate.approvals.check_approver): the name rule
holds for every caller (the Prefect approval flow too), not only behind the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from gate_factories import facts, policy

from dpgov.errors import UsageError
from dpgov.gate import approvals
from dpgov.identity import Identity
from dpgov.ledger.releases import Binding
from dpgov.policy import LoadedPolicy

BOUND = Binding(1, "m", "1", "run-1", "res-1", True, "bob", {})


def loaded(**sections: object) -> LoadedPolicy:
    return LoadedPolicy(policy=policy(**sections), path=Path("p.yaml"), sha256="0" * 64)


def check_approver(kind, by, pol, facts, *, who="root", setter=None):
    return approvals.check_approver(
        kind, by, pol, facts, who=Identity(who, "os-user"), binding=BOUND, setter=setter
    )


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


def test_by_naming_someone_other_than_who_acts_is_refused() -> None:
    with pytest.raises(UsageError, match="'alice' is not who acts: the deployment authenticates"):
        check_approver("approval", "alice", loaded(), facts(), who="mallory")


def test_by_mapped_to_who_acts_is_that_approver() -> None:
    pol = loaded(approvals={"approvers": ["alice"], "identities": {"alice": "alice.smith"}})
    assert check_approver("approval", "alice", pol, facts(), who="alice.smith") == "alice"
    assert check_approver("approval", None, pol, facts(), who="alice.smith") == "alice"
    with pytest.raises(UsageError, match=r"maps 'alice' to 'alice\.smith'"):
        check_approver("approval", "alice", pol, facts(), who="alice")


def test_the_author_identity_may_not_approve_under_another_name() -> None:
    """The author rule compares identities: bob mapped under another name is still bob."""
    pol = loaded(approvals={"identities": {"robert": "bob"}})
    with pytest.raises(UsageError, match="is the author of run"):
        check_approver("approval", "robert", pol, facts(), who="bob")
    assert check_approver("refusal", "robert", pol, facts(), who="bob") == "robert"


def test_a_service_identity_never_approves() -> None:
    pol = loaded(governance={"service_identities": ["prefect-worker"]})
    with pytest.raises(UsageError, match="service identity"):
        check_approver("approval", "prefect-worker", pol, facts(), who="prefect-worker")


def test_separate_duties_bar_the_policy_setter_and_the_author() -> None:
    pol = loaded(approvals={"allow_author": True}, governance={"separate_duties": True})
    with pytest.raises(UsageError, match="set the policy in force"):
        check_approver("approval", "carol", pol, facts(), who="carol", setter="carol")
    with pytest.raises(UsageError, match="author of the run"):
        check_approver("approval", "bob", pol, facts(), who="bob", setter="carol")
    assert check_approver("approval", "alice", pol, facts(), who="alice", setter="carol")
