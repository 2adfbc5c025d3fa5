"""Signed approvals (ssh-keygen -Y sign / verify) and recall, against a real ledger/registry."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from gate_factories import MODEL

needs_ssh = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def keypair(tmp_path, name="alice"):
    key = tmp_path / f"{name}_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key, key.with_suffix(".pub").read_text().strip()


def with_key(env, pub: str) -> None:
    env.set_policy(
        env.policy_path.read_text().replace(
            "allow_author: false", f'allow_author: false\n  ssh_keys: {{alice: "{pub}"}}'
        )
    )


@needs_ssh
def test_a_signed_approval_is_verified_and_counts(env, cli, tmp_path):
    key, pub = keypair(tmp_path)
    with_key(env, pub)
    version, _ = env.register()
    r = cli("approve", MODEL, version, "--by", "alice")
    assert r.code == 2 and "counts only signed" in r.err and env.entries("approval") == []
    r = cli("approve", MODEL, version, "--by", "alice", "--sign", str(key), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["signed"] is True
    (entry,) = env.entries("approval")
    assert "BEGIN SSH SIGNATURE" in entry.payload["signature"]
    assert cli("gate", MODEL, version).code == 0


@needs_ssh
def test_a_tampered_or_foreign_signature_is_refused(env, cli, tmp_path):
    key, pub = keypair(tmp_path)
    other, _ = keypair(tmp_path, "mallory")
    with_key(env, pub)
    version, _ = env.register()
    message = cli("approve", MODEL, version, "--by", "alice", "--print-message").out
    assert f"version: {version}" in message and "facts_sha256: " in message
    # a signature over another message (the refusal), made with alice's key
    msg = tmp_path / "msg"
    msg.write_text(message.replace("decision: approval", "decision: refusal"))
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", "dpgov-approval", "-f", str(key), str(msg)],
        check=True,
    )
    r = cli("approve", MODEL, version, "--by", "alice", "--signature", f"{msg}.sig")
    assert r.code == 2 and "does not verify" in r.err
    # the right message signed with another key
    msg.write_text(message)
    (tmp_path / "msg.sig").unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", "dpgov-approval", "-f", str(other), str(msg)],
        check=True,
    )
    r = cli("approve", MODEL, version, "--by", "alice", "--signature", f"{msg}.sig")
    assert r.code == 2 and "does not verify" in r.err
    assert env.entries("approval") == []


@needs_ssh
def test_the_gate_reverifies_signatures_against_the_key_in_force(env, cli, tmp_path):
    key, pub = keypair(tmp_path)
    _, new_pub = keypair(tmp_path, "alice2")
    with_key(env, pub)
    version, _ = env.register()
    assert cli("approve", MODEL, version, "--by", "alice", "--sign", str(key)).code == 0
    assert cli("gate", MODEL, version).code == 0
    env.set_policy(env.policy_path.read_text().replace(pub, new_pub))
    r = cli("gate", MODEL, version, "--json")
    check = next(c for c in json.loads(r.out)["checks"] if c["name"] == "approvals")
    assert r.code == 1 and "not signed with the approver's key" in check["reason"]


# ------------------------------------------------------------------------ recall


def promoted(env, cli) -> str:
    version, _ = env.register()
    assert cli("approve", MODEL, version, "--by", "alice").code == 0
    assert cli("promote", MODEL, version).code == 0
    return version


def test_recall_moves_the_alias_back_and_voids_the_statement(env, cli):
    v1 = promoted(env, cli)
    v2 = promoted(env, cli)
    r = cli("recall", MODEL, v2, "--reason", "audit finding 7", "--json", as_="dpo")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["moved_to"] == v1 and data["statement"] == "void" and data["identity"] == "dpo"
    assert env.alias() == v1
    (entry,) = env.entries("recall")
    assert entry.payload["version"] == v2 and entry.payload["reason"] == "audit finding 7"
    assert entry.actor == "dpo"
    assert env.tags(v2)["dpgov.statement"] == "void"
    # the move back is an ordinary promotion (gate decision and entry)
    assert env.entries("promotion")[-1].payload["version"] == v1
    # promotion refuses the recalled version; the gate shows it as recalled
    r = cli("promote", MODEL, v2)
    assert r.code == 1 and "recall: recalled by dpo" in r.err
    assert env.alias() == v1
    # recalling twice is refused
    assert cli("recall", MODEL, v2, "--reason", "again").code == 2


def test_recall_of_the_only_release_deletes_the_alias(env, cli):
    v1 = promoted(env, cli)
    r = cli("recall", MODEL, v1, "--reason", "bug in preprocessing")
    assert r.code == 0, r.err
    assert env.alias() is None and "deleted" in r.out
    from dpgov.gate.promotion import released_version

    (deleted,) = env.entries("alias_deleted")
    assert deleted.payload["version"] == v1 and deleted.payload["alias"] == "champion"
    assert released_version(env.ledger, MODEL, "champion") is None
    assert cli("recall", MODEL, "9", "--reason", "x").code == 2
    assert cli("recall", MODEL, v1, "--reason", " ").code == 2


# ------------------------------------------------------------------------ the audit


def audit_kinds(cli) -> list[str]:
    r = cli("audit", "--json")
    return [f["kind"] for f in json.loads(r.out)["findings"]]


def test_the_audit_reports_a_release_whose_facts_changed_and_a_clean_recall(env, cli):
    v1 = promoted(env, cli)
    v2 = promoted(env, cli)
    assert "release_facts_mismatch" not in audit_kinds(cli)
    path = env.artifact(v2, "candidate_facts.json")
    path.write_text(path.read_text().replace('"auroc": 0.8', '"auroc": 0.9'))
    kinds = audit_kinds(cli)
    assert "release_facts_mismatch" in kinds
    assert cli("recall", MODEL, v2, "--reason", "facts edited after release").code == 0
    kinds = audit_kinds(cli)
    assert env.alias() == v1
    assert not {"release_facts_mismatch", "release_recalled", "alias_outside_gate"} & set(kinds)


@needs_ssh
def test_an_answer_recorded_by_a_worker_counts_only_signed(env, tmp_path):
    """What the Prefect approval pause records (pipelines/approval.py): the worker writes it,
    so the approver is authenticated by their signature alone."""
    from dpgov.errors import UsageError
    from dpgov.gate.approvals import message_for, record_approval
    from dpgov.gate.in_force import policy_in_force
    from dpgov.gate.signatures import sign
    from dpgov.identity import Identity
    from dpgov.ledger.releases import binding_of
    from dpgov.tracking.registry import Registry
    from pipelines.approval import ApprovalInput, unsigned_answer

    version, _ = env.register()
    worker = Identity("alice", "ssh-signature")
    with pytest.raises(UsageError, match="only an identity authenticated by its signature"):
        record_approval(
            model=MODEL,
            version=version,
            by="alice",
            note="",
            ledger=env.ledger,
            policy=policy_in_force(env.ledger),
            registry=Registry(),
            who=Identity("alice", "os-user"),
        )
    args = {"model": MODEL, "version": version, "by": "alice", "note": "", "ledger": env.ledger}
    with pytest.raises(UsageError, match=r"no key in approvals\.ssh_keys"):
        record_approval(**args, policy=policy_in_force(env.ledger), registry=Registry(), who=worker)
    key, pub = keypair(tmp_path)
    with_key(env, pub)
    loaded = policy_in_force(env.ledger)
    with pytest.raises(UsageError, match="counts only signed"):
        record_approval(**args, policy=loaded, registry=Registry(), who=worker)
    message = message_for("approval", MODEL, version, binding_of(env.ledger, MODEL, version))
    entry, _ = record_approval(
        **args, policy=loaded, registry=Registry(), who=worker, signature=sign(message, key)
    )
    assert entry.payload["authenticated_by"] == "ssh-signature" and entry.actor == "alice"
    answer = ApprovalInput(decision="approve", approver="carol")
    out = unsigned_answer(MODEL, version, answer, "the answer is not signed")
    assert out["status"] == "not recorded" and f"dpgov approve {MODEL} {version}" in out["reason"]
