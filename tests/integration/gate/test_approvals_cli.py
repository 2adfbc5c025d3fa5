"""``dpgov approve`` and ``dpgov refuse`` against a real ledger and registry."""

from __future__ import annotations

import json

from gate_factories import MODEL


def strict_approvers(env, names="[alice, carol]", required=1, allow_author="false"):
    text = env.policy_path.read_text()
    text = text.replace("required: 1", f"required: {required}")
    text = text.replace("approvers: null", f"approvers: {names}")
    text = text.replace("allow_author: false", f"allow_author: {allow_author}")
    env.set_policy(text)


def test_approval_is_recorded_in_ledger_with_who_when_why(env, cli):
    version, facts = env.register()
    r = cli("approve", MODEL, version, "--by", "alice", "--note", "reviewed subgroups")
    assert r.code == 0, r.err
    (entry,) = env.entries("approval")
    assert entry.payload["by"] == "alice" and entry.payload["note"] == "reviewed subgroups"
    assert entry.payload["version"] == version and entry.payload["run_id"] == facts.run_id
    assert entry.time and entry.actor == "alice" == entry.payload["identity"]
    assert entry.payload["authenticated_by"] == "os-user"


def test_approval_is_recorded_as_model_version_tags(env, cli):
    version, _ = env.register()
    cli("approve", MODEL, version, "--by", "alice", "--note", "fine")
    tags = env.tags(version)
    seq = env.entries("approval")[0].seq
    assert json.loads(tags[f"dpgov.approval.{seq}"])["note"] == "fine"
    assert tags["dpgov.approvals"] == "alice"


def test_same_approver_twice_counts_once(env, cli):
    strict_approvers(env, required=2)
    version, _ = env.register()
    cli("approve", MODEL, version, "--by", "alice")
    r = cli("approve", MODEL, version, "--by", "alice", "--json")
    data = json.loads(r.out)
    assert len(data["approvals"]) == 1 and data["complete"] is False


def test_another_spelling_of_an_approver_is_refused_not_counted(env, cli):
    """``ALICE`` or ``alice`` with a zero-width space is not a second approver: identity names
    are refused unless already in their one form (dpgov.names), and nothing is recorded."""
    strict_approvers(env, required=2)
    version, _ = env.register()
    cli("approve", MODEL, version, "--by", "alice")
    for other in ("ALICE", "alice\u200b", "ａｌｉｃｅ"):
        r = cli("approve", MODEL, version, "--by", other, as_="alice")
        assert r.code == 2 and r.err.startswith("error: --by ") and r.err.count("\n") == 1, r.err
    assert [e.payload["by"] for e in env.entries("approval")] == ["alice"]


def test_self_approval_refused_exits_2_and_records_nothing(env, cli):
    version, _ = env.register()  # author "bob"
    r = cli("approve", MODEL, version, "--by", "bob")
    assert r.code == 2 and "forbids self-approval" in r.err
    assert env.entries("approval") == []


def test_self_approval_recorded_when_policy_allows(env, cli):
    strict_approvers(env, names="null", allow_author="true")
    version, _ = env.register()
    assert cli("approve", MODEL, version, "--by", "bob").code == 0
    assert cli("gate", MODEL, version).code == 0


def test_approver_not_in_list_exits_2_and_records_nothing(env, cli):
    strict_approvers(env)
    version, _ = env.register()
    r = cli("approve", MODEL, version, "--by", "mallory")
    assert r.code == 2 and "'mallory' is not an approver" in r.err
    assert env.entries("approval") == []
    assert "dpgov.approvals" not in env.tags(version)


def test_refuser_not_in_list_exits_2_and_records_nothing(env, cli):
    strict_approvers(env)
    version, _ = env.register()
    r = cli("refuse", MODEL, version, "--by", "mallory", "--reason", "no")
    assert r.code == 2
    assert env.entries("refusal") == []


def test_approving_unknown_version_exits_2(env, cli):
    env.register()
    r = cli("approve", MODEL, "5", "--by", "alice")
    assert r.code == 2 and env.entries("approval") == []


def test_approving_the_reference_exits_2(env, cli):
    version, _ = env.register(private=False)
    r = cli("approve", MODEL, version, "--by", "alice")
    assert r.code == 2 and "non-private reference" in r.err


def test_refusal_is_recorded_with_its_reason(env, cli):
    version, _ = env.register()
    r = cli("refuse", MODEL, version, "--by", "carol", "--reason", "FNR gap too wide for 70+")
    assert r.code == 0
    (entry,) = env.entries("refusal")
    assert entry.payload["reason"] == "FNR gap too wide for 70+"
    assert env.tags(version)["dpgov.refusals"] == "carol"


def test_refusal_needs_a_reason(env, cli):
    version, _ = env.register()
    r = cli("refuse", MODEL, version, "--by", "carol", "--reason", "  ")
    assert r.code == 2 and env.entries("refusal") == []


def test_refusal_blocks_gate_until_same_approver_approves(env, cli):
    version, _ = env.register()
    cli("approve", MODEL, version, "--by", "alice")
    cli("refuse", MODEL, version, "--by", "carol", "--reason", "not yet")
    assert cli("gate", MODEL, version).code == 1
    cli("approve", MODEL, version, "--by", "carol", "--note", "fixed")
    assert cli("gate", MODEL, version).code == 0
