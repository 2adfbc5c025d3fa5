"""``dpgov gate --preview``: the ``gate --json`` object with ``preview: true``, the privacy
statement the version's run logged and where the judging policy came from; read-only (no
ledger entry, no gate tags on the version)."""

from __future__ import annotations

import json

from tests.integration.gate.conftest import MODEL


def _gate_tags(env, version):  # type: ignore[no-untyped-def]
    tags = env.client.get_model_version(MODEL, version).tags
    return {k: v for k, v in tags.items() if "gate" in k}


def test_preview_carries_the_statement_and_the_policy_source_and_records_nothing(env, cli):
    r = cli("gate", MODEL, env.register()[0], "--preview", "--json")
    assert json.loads(r.out)["policy_source"]["kind"] == "packaged"  # no `dpgov policy set` yet
    env.set_policy()
    version, facts = env.register()
    before = len(env.ledger.entries())
    tags_before = _gate_tags(env, version)
    r = cli("gate", MODEL, version, "--preview", "--json")
    assert r.code == 1, r.out + r.err  # the policy in force asks for an approval
    data = json.loads(r.out)
    assert data["preview"] is True and data["ledger_seq"] is None
    assert "approvals" in data["failing"]
    assert data["statement"]["run_id"] == facts.run_id
    assert data["statement"]["statement"]["epsilon"] == facts.epsilon
    src = data["policy_source"]
    assert src["kind"] == "ledger" and src["seq"] is not None and src["set_by"] == "tester"
    assert src["sha256"] == data["policy_sha256"]
    assert len(env.ledger.entries()) == before and env.entries("gate_decision") == []
    assert _gate_tags(env, version) == tags_before

    # the same object as the recorded gate, less the record
    r2 = cli("gate", MODEL, version, "--json")
    recorded = json.loads(r2.out)
    assert recorded["preview"] is False and recorded["ledger_seq"] is not None
    assert [c["name"] for c in recorded["checks"]] == [c["name"] for c in data["checks"]]


def test_preview_with_a_policy_file_names_the_file(env, cli, tmp_path):
    version, _ = env.register()
    lax = tmp_path / "lax.yaml"
    lax.write_text(env.policy_path.read_text().replace("required: 1", "required: 0"))
    r = cli("gate", MODEL, version, "--preview", "--policy", str(lax), "--json")
    assert r.code == 0, r.out + r.err
    src = json.loads(r.out)["policy_source"]
    assert src == {"kind": "file", "path": str(lax), "sha256": src["sha256"]}
    r = cli("gate", MODEL, version, "--preview")
    assert "preview: nothing recorded" in r.out
