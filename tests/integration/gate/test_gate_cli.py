"""``dpgov gate`` against a real ledger and a real MLflow registry."""

from __future__ import annotations

import json

from gate_factories import MODEL


def test_gate_prints_every_check_and_exits_1_without_approval(env, cli):
    version, _ = env.register()
    r = cli("gate", MODEL, version)
    assert r.code == 1
    assert "BLOCKED" in r.out
    for name in (
        "private_model",
        "release_epsilon",
        "ledger_reservation",
        "auroc",
        "fnr_gap:age_band",
        "approvals",
    ):
        assert name in r.out
    assert r.err.startswith("error: ") and "approvals" in r.err


def test_gate_exits_0_once_approved(env, cli):
    version, _ = env.register()
    assert cli("approve", MODEL, version, "--by", "alice").code == 0
    r = cli("gate", MODEL, version)
    assert r.code == 0, r.out + r.err
    assert "ALLOWED" in r.out


def test_gate_json_holds_every_check(env, cli):
    version, _ = env.register()
    r = cli("gate", MODEL, version, "--json")
    data = json.loads(r.out)
    assert r.code == 1
    assert data["allowed"] is False and data["failing"] == ["approvals"]
    assert {c["name"] for c in data["checks"]} >= {"release_epsilon", "block_budget:flchain/1995"}
    assert all({"name", "observed", "limit", "passed", "reason"} <= set(c) for c in data["checks"])


def test_gate_decision_is_written_to_the_ledger_with_the_policy_hash(env, cli):
    from dpgov.policy import load_policy

    version, facts = env.register()
    cli("gate", MODEL, version)
    (entry,) = env.entries("gate_decision")
    p = entry.payload
    assert p["model"] == MODEL and p["version"] == version and p["allowed"] is False
    assert p["policy_sha256"] == load_policy(env.policy_path).sha256
    assert p["run_id"] == facts.run_id
    assert len(p["checks"]) > 10
    assert env.ledger.verify().ok


def test_gate_decision_is_written_as_model_version_tags(env, cli):
    version, _ = env.register()
    cli("gate", MODEL, version)
    tags = env.tags(version)
    assert tags["dpgov.gate.allowed"] == "false"
    assert tags["dpgov.gate.failing"] == "approvals"
    assert tags["dpgov.gate.seq"] == str(env.entries("gate_decision")[0].seq)


def test_gate_uses_the_ledgers_epsilon_when_the_run_understates_it(env, cli):
    version, _ = env.register(epsilon=0.01)
    data = json.loads(cli("gate", MODEL, version, "--json").out)
    eps = next(c for c in data["checks"] if c["name"] == "release_epsilon")
    assert eps["observed"] > 0.01 and "(ledger)" in eps["reason"]


def test_gate_blocks_an_uncommitted_reservation(env, cli):
    version, _ = env.register(commit=False)  # never bound: tracking binds committed runs only
    assert cli("approve", MODEL, version, "--by", "alice").code == 2
    r = cli("gate", MODEL, version, "--json")
    assert r.code == 1
    assert json.loads(r.out)["failing"] == ["ledger_reservation", "approvals", "facts_bound"]


def test_gate_blocks_the_reference_even_if_facts_claim_private(env, cli):
    version, _ = env.register()
    env.client.set_model_version_tag(MODEL, version, "dpgov.status", "reference")
    r = cli("gate", MODEL, version, "--json")
    assert "private_model" in json.loads(r.out)["failing"]


def test_gate_unknown_model_exits_2_and_records_nothing(env, cli):
    env.register()
    r = cli("gate", "no-such-model", "1")
    assert r.code == 2
    assert (
        r.err.strip() == f"error: unknown model 'no-such-model' in the registry at "
        f"sqlite:///{env.home / 'mlflow.db'}"
    )
    assert env.entries("gate_decision") == []


def test_gate_unknown_version_exits_2_and_records_nothing(env, cli):
    env.register()
    r = cli("gate", MODEL, "9")
    assert r.code == 2 and "has no version 9" in r.err
    assert env.entries("gate_decision") == []


def test_gate_malformed_version_exits_2(env, cli):
    r = cli("gate", MODEL, "latest")
    assert r.code == 2 and "VERSION must be a model version number" in r.err


def test_gate_preview_with_a_malformed_policy_exits_2_and_records_nothing(env, cli, tmp_path):
    version, _ = env.register()
    bad = tmp_path / "bad.yaml"
    bad.write_text(env.policy_path.read_text().replace("min_auroc: 0.6", "min_auroc: 6"))
    r = cli("gate", MODEL, version, "--preview", "--policy", str(bad))
    assert r.code == 2
    assert r.err.count("\n") == 1 and "utility.min_auroc" in r.err
    assert env.entries("gate_decision") == []


def test_gate_policy_file_without_preview_is_a_usage_error(env, cli, tmp_path):
    version, _ = env.register()
    lax = tmp_path / "lax.yaml"
    lax.write_text(env.policy_path.read_text().replace("required: 1", "required: 0"))
    r = cli("gate", MODEL, version, "--policy", str(lax))
    assert r.code == 2 and "dpgov policy set" in r.err and "--preview" in r.err
    assert env.entries("gate_decision") == []


def test_gate_preview_judges_by_the_file_and_records_nothing(env, cli, tmp_path):
    version, _ = env.register()
    lax = tmp_path / "lax.yaml"
    lax.write_text(env.policy_path.read_text().replace("required: 1", "required: 0"))
    assert cli("gate", MODEL, version).code == 1  # the policy in force asks for an approval
    before = len(env.ledger.entries())
    r = cli("gate", MODEL, version, "--preview", "--policy", str(lax), "--json")
    assert r.code == 0, r.out + r.err
    assert json.loads(r.out)["preview"] is True
    assert len(env.ledger.entries()) == before


def test_gate_version_without_facts_exits_2(env, cli):
    run = env.client.create_run(env.experiment_id)
    env.client.create_registered_model("bare")
    env.client.create_model_version("bare", source="runs:/x/model", run_id=run.info.run_id)
    r = cli("gate", "bare", "1")
    assert r.code == 2 and "candidate_facts.json" in r.err


def test_a_tampered_projection_table_blocks_the_release(env, cli):
    """The gate's ledger check covers the tables as well as the chain: an approved candidate
    whose block rows were edited in the tables (a direct UPDATE) is blocked until repaired."""
    import sqlalchemy as sa

    from dpgov.ledger.schema import blocks_t

    version, _ = env.register()
    assert cli("approve", MODEL, version, "--by", "alice").code == 0
    assert cli("gate", MODEL, version).code == 0
    with env.ledger.engine.begin() as conn:
        conn.execute(sa.update(blocks_t).values(patients=1))
    r = cli("gate", MODEL, version, "--json")
    data = json.loads(r.out)
    assert r.code == 1, r.out + r.err
    ledger_check = next(c for c in data["checks"] if not c["passed"])
    assert "tables disagree with the entries" in ledger_check["reason"]
