"""``dpgov promote``: the gate re-checked now, the alias moved only when it passes."""

from __future__ import annotations

import json

from gate_factories import MODEL


def approved(env, cli, **kw) -> str:
    version, _ = env.register(**kw)
    assert cli("approve", MODEL, version, "--by", "alice").code == 0
    return version


def test_promotion_sets_the_alias_and_records_it(env, cli):
    version = approved(env, cli)
    r = cli("promote", MODEL, version)
    assert r.code == 0, r.err
    assert env.alias() == version
    (entry,) = env.entries("promotion")
    assert entry.payload["version"] == version and entry.payload["replaced"] is None
    assert entry.payload["alias"] == "champion"
    decision = env.entries("gate_decision")[-1]
    assert entry.payload["decision_seq"] == decision.seq and decision.payload["allowed"]


def test_blocked_promotion_exits_1_lists_every_failing_check_and_moves_nothing(env, cli):
    version, _ = env.register(auroc=0.55)
    r = cli("promote", MODEL, version)
    assert r.code == 1
    assert "auroc:" in r.err and "approvals:" in r.err and "2 failing check(s)" in r.err
    assert env.alias() is None
    assert env.entries("promotion") == []
    assert env.entries("gate_decision")[-1].payload["allowed"] is False


def test_blocked_promotion_json_names_failing_checks(env, cli):
    version, _ = env.register()
    r = cli("promote", MODEL, version, "--json")
    assert r.code == 1
    data = json.loads(r.out)
    assert data["promoted"] is False and data["decision"]["failing"] == ["approvals"]


def test_promotion_records_the_version_it_replaced(env, cli):
    v1 = approved(env, cli)
    v2 = approved(env, cli)
    cli("promote", MODEL, v1)
    r = cli("promote", MODEL, v2, "--json")
    assert r.code == 0
    assert json.loads(r.out)["replaced"] == v1
    assert env.alias() == v2
    assert env.entries("promotion")[-1].payload["replaced"] == v1
    assert json.loads(env.tags(v1)["dpgov.replaced_by"])["version"] == v2


def test_rollback_goes_through_the_gate(env, cli):
    v1 = approved(env, cli)
    v2 = approved(env, cli)
    cli("promote", MODEL, v1)
    cli("promote", MODEL, v2)
    cli("refuse", MODEL, v1, "--by", "carol", "--reason", "miscalibrated")
    r = cli("promote", MODEL, v1)
    assert r.code == 1 and "refusals" in r.err
    assert env.alias() == v2
    cli("approve", MODEL, v1, "--by", "carol")
    r = cli("promote", MODEL, v1, "--json")
    assert r.code == 0
    data = json.loads(r.out)
    assert data["rollback"] is True and data["replaced"] == v2
    assert env.alias() == v1


def test_promotion_re_evaluates_policy_at_that_moment(env, cli):
    version = approved(env, cli)
    assert cli("gate", MODEL, version).code == 0
    env.set_policy(env.policy_path.read_text().replace("required: 1", "required: 2"))
    r = cli("promote", MODEL, version)
    assert r.code == 1 and "1 of 2 required" in r.err
    assert env.alias() is None


def test_promoting_the_alias_holder_again_moves_nothing(env, cli):
    version = approved(env, cli)
    cli("promote", MODEL, version)
    r = cli("promote", MODEL, version)
    assert r.code == 0 and "nothing moved" in r.out
    assert len(env.entries("promotion")) == 1


def test_promotion_to_another_alias(env, cli):
    version = approved(env, cli)
    assert cli("promote", MODEL, version, "--alias", "challenger").code == 0
    assert env.alias("challenger") == version and env.alias("champion") is None


def test_promotion_alias_comes_from_policy(env, cli):
    env.set_policy(env.policy_path.read_text().replace("alias: champion", "alias: production"))
    version = approved(env, cli)
    assert cli("promote", MODEL, version).code == 0
    assert env.alias("production") == version


def test_bad_alias_exits_2_and_records_nothing(env, cli):
    version = approved(env, cli)
    r = cli("promote", MODEL, version, "--alias", "v1")
    assert r.code == 2 and "--alias 'v1'" in r.err
    assert env.entries("gate_decision") == [] and env.entries("promotion") == []


def test_reference_is_never_promoted(env, cli):
    version, _ = env.register(private=False)
    r = cli("promote", MODEL, version)
    assert r.code == 1 and "private_model" in r.err
    assert env.alias() is None


def test_promoting_unknown_version_exits_2_and_records_nothing(env, cli):
    env.register()
    r = cli("promote", MODEL, "3")
    assert r.code == 2
    assert env.entries("gate_decision") == [] and env.entries("promotion") == []


def test_ledger_knows_what_the_alias_points_at(env, cli):
    from dpgov.gate.promotion import released_version

    v1 = approved(env, cli)
    cli("promote", MODEL, v1)
    assert released_version(env.ledger, MODEL, "champion") == v1 == env.alias()
    assert env.ledger.verify().ok


def test_promotion_of_a_logged_pytorch_model(env, cli):
    version, _ = env.register(torch_model=True)
    cli("approve", MODEL, version, "--by", "alice")
    assert cli("promote", MODEL, version).code == 0
    import mlflow
    import torch

    model = mlflow.pytorch.load_model(f"models:/{MODEL}@champion")
    assert model(torch.zeros(1, 3)).shape == (1, 1)
