"""Issue 13's attacks, each against a real ledger and registry: who acts, and bound facts."""

from __future__ import annotations

import json

from gate_factories import MODEL, SUBGROUPS, subgroup

# ------------------------------------------------------------------------ who acts


def test_by_as_someone_else_is_refused_and_records_nothing(env, cli):
    version, _ = env.register()
    r = cli("approve", MODEL, version, "--by", "alice", as_="mallory")
    assert r.code == 2 and "'alice' is not who acts" in r.err and "'mallory'" in r.err
    assert env.entries("approval") == []
    assert "dpgov.approvals" not in env.tags(version)


def test_zero_width_root_is_refused_exit_2(env, cli):
    version, _ = env.register()
    r = cli("approve", MODEL, version, "--by", "root\u200b", as_="root")
    assert r.code == 2 and "ZERO WIDTH SPACE" in r.err and r.err.count("\n") == 1
    assert env.entries("approval") == []


def test_dpgov_actor_does_not_make_anyone_bob(env, cli, monkeypatch):
    version, _ = env.register()
    monkeypatch.setenv("DPGOV_ACTOR", "bob")
    r = cli("approve", MODEL, version, "--by", "carol", as_="mallory")
    assert r.code == 2 and "not who acts" in r.err
    r = cli("approve", MODEL, version, "--by", "dave", as_="dave")
    assert r.code == 0, r.err
    (entry,) = env.entries("approval")
    assert entry.payload["identity"] == entry.actor == "dave"


def test_the_authors_approval_under_a_mapped_name_is_refused(env, cli):
    """The author rule compares identities: bob approving as 'robert' is still bob."""
    env.set_policy(
        env.policy_path.read_text().replace(
            "allow_author: false", "allow_author: false\n  identities: {robert: bob}"
        )
    )
    version, _ = env.register()  # bound with author bob
    r = cli("approve", MODEL, version, "--by", "robert", as_="bob")
    assert r.code == 2 and "author of run" in r.err
    assert env.entries("approval") == []


def test_an_approval_under_an_old_mapping_stops_counting(env, cli):
    """At evaluation only the mapping in force counts: remapping the name voids the approval."""
    env.set_policy(
        env.policy_path.read_text().replace(
            "allow_author: false", "allow_author: false\n  identities: {alice: alice.smith}"
        )
    )
    version, _ = env.register()
    assert cli("approve", MODEL, version, "--by", "alice", as_="alice.smith").code == 0
    assert cli("gate", MODEL, version).code == 0
    env.set_policy(
        env.policy_path.read_text().replace("{alice: alice.smith}", "{alice: alice.jones}")
    )
    r = cli("gate", MODEL, version, "--json")
    check = next(c for c in json.loads(r.out)["checks"] if c["name"] == "approvals")
    assert r.code == 1 and "acted as 'alice.smith'" in check["reason"]


def test_a_service_identity_never_approves(env, cli):
    env.set_policy(
        env.policy_path.read_text() + "governance:\n  service_identities: [prefect-worker]\n"
    )
    version, _ = env.register()
    r = cli("approve", MODEL, version, "--by", "prefect-worker")
    assert r.code == 2 and "service identity" in r.err
    assert env.entries("approval") == []


def test_separate_duties_bar_the_policy_setter(env, cli):
    env.set_policy(
        env.policy_path.read_text() + "governance:\n  separate_duties: true\n", actor="carol"
    )
    version, _ = env.register()
    r = cli("approve", MODEL, version, "--by", "carol")
    assert r.code == 2 and "set the policy in force" in r.err
    assert cli("approve", MODEL, version, "--by", "alice").code == 0
    assert cli("gate", MODEL, version).code == 0


# ------------------------------------------------------------------------ bound facts


def test_edited_facts_are_refused_by_the_gate(env, cli):
    """The age-band FNR edited from 0.95 to 0.3 in candidate_facts.json: the gate refuses."""
    bad = [
        s if s.group != "70+" else subgroup("age_band", "70+", 230, 48, 0.82, 0.95)
        for s in SUBGROUPS
    ]
    version, _ = env.register(subgroups=bad)
    assert cli("approve", MODEL, version, "--by", "alice").code == 0
    path = env.artifact(version, "candidate_facts.json")
    data = json.loads(path.read_text())
    for s in data["subgroups"]:
        if s["group"] == "70+":
            s["fnr"], s["fnr_lo"], s["fnr_hi"] = 0.3, 0.26, 0.34
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    r = cli("gate", MODEL, version, "--json")
    assert r.code == 1
    check = next(c for c in json.loads(r.out)["checks"] if c["name"] == "facts_bound")
    assert not check["passed"] and "candidate facts changed since tracking" in check["reason"]
    assert cli("promote", MODEL, version).code == 1 and env.alias() is None


def test_swapped_weights_are_refused(env, cli):
    version, _ = env.register()
    assert cli("approve", MODEL, version, "--by", "alice").code == 0
    assert cli("gate", MODEL, version).code == 0
    env.artifact(version, "model/weights.bin").write_bytes(b"other weights")
    r = cli("promote", MODEL, version)
    assert r.code == 1 and "model weights changed since tracking" in r.err
    assert env.alias() is None


def test_a_version_claiming_another_runs_reservation_is_refused(env, cli):
    import pytest

    from dpgov.errors import UsageError

    v1, f1 = env.register()
    # a second run whose facts claim v1's reservation: tracking cannot bind it...
    with pytest.raises(UsageError, match="already bound to run"):
        env.register(reservation_id=f1.reservation_id, epsilon=f1.epsilon)
    v2 = str(int(v1) + 1)
    # ...and the registered version is refused by the gate
    assert cli("approve", MODEL, v2, "--by", "alice").code == 2
    r = cli("gate", MODEL, v2, "--json")
    assert r.code == 1
    check = next(c for c in json.loads(r.out)["checks"] if c["name"] == "facts_bound")
    assert "no facts_bound entry" in check["reason"]


def test_a_non_private_run_with_forged_private_facts_is_refused(env, cli):
    """The reference, bound with no reservation, presented as private with forged facts and
    tags: the ledger knows it reserved no budget."""
    _v1, f1 = env.register()
    ref, _ = env.register(private=False)
    path = env.artifact(ref, "candidate_facts.json")
    data = json.loads(path.read_text())
    data.update(private=True, reservation_id=f1.reservation_id, epsilon=f1.epsilon)
    path.write_text(json.dumps(data))
    env.client.set_model_version_tag(MODEL, ref, "dpgov.status", "candidate")
    env.client.set_model_version_tag(MODEL, ref, "dpgov.private", "true")
    r = cli("gate", MODEL, ref, "--json")
    assert r.code == 1
    check = next(c for c in json.loads(r.out)["checks"] if c["name"] == "facts_bound")
    assert "reserved no budget (the non-private reference)" in check["reason"]
    assert cli("approve", MODEL, ref, "--by", "alice").code == 2
    assert cli("promote", MODEL, ref).code == 1 and env.alias() is None


def test_promote_with_a_lax_policy_is_a_usage_error(env, cli, tmp_path):
    version, _ = env.register()
    lax = tmp_path / "lax.yaml"
    lax.write_text(env.policy_path.read_text().replace("required: 1", "required: 0"))
    r = cli("promote", MODEL, version, "--policy", str(lax))
    assert r.code == 2 and "dpgov policy set" in r.err
    assert env.alias() is None and env.entries("gate_decision") == []
    for cmd in (("approve", "--by", "alice"), ("refuse", "--by", "alice", "--reason", "x")):
        r = cli(cmd[0], MODEL, version, *cmd[1:], "--policy", str(lax))
        assert r.code == 2 and "dpgov policy set" in r.err
    assert env.entries("approval") == [] and env.entries("refusal") == []
