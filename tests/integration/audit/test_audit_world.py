"""``dpgov audit`` on a governed world: clean as built, and each real fault found.

Every test copies the world (see conftest.py), makes one fault the way someone would (SQL on
the ledger database, a call to MLflow, a deleted DVC cache, a crashed run), and checks the
audit names it: exit 1, the finding's kind, and where.
"""

from __future__ import annotations

import json

from dpgov.ledger.chain import canonical, entry_hash

MODEL = "audit-model"


def test_the_governed_world_audits_clean(clone, audit):
    result = audit()
    assert result.code == 0, result.out + result.err
    report = result.json
    assert report["ok"] is True and report["findings"] == []
    assert report["ledger"]["chain_ok"] is True
    assert report["anchors"]["count"] == 3 and report["anchors"]["matched"] == 3
    # every block recomputed from scratch agrees with the ledger's own figure
    first = _blocks(clone)[0]  # the crashed run's reservation charged it too
    for block in report["blocks"]:
        assert abs(block["epsilon"] - block["epsilon_ledger"]) < 1e-6
        assert block["charges"] == (3 if block["block"] == first else 2)
    # the release: through the gate, with alice's approval and a statement from the ledger
    (release,) = report["releases"]
    world = clone.world
    assert (release["model"], release["alias"]) == (MODEL, "champion")
    assert release["version"] == world.runs[0].model_version
    assert release["decision_ok"] and release["approvals_ok"]
    assert [a["by"] for a in release["approvals"]] == ["alice"]
    statement = release["statement"]
    assert abs(statement["epsilon"] - world.runs[0].epsilon) < 1e-6
    assert statement["data_version"] == world.data_version
    assert "Unit of privacy: one patient" in release["statement_text"]
    assert {g["attribute"] for g in release["subgroups"]} == {"sex", "age_band"}
    # the crashed run's reservation is listed as aborted, and every charge's data is in DVC
    assert [r["reservation"] for r in report["reservations"]["aborted"]] == [world.aborted]
    assert report["dvc"]["versions"][0]["found_in"].startswith("data/prepared/synth.dvc")
    assert len(report["policies"]) == 1 and report["policies"][0]["current"]


def test_human_output_and_html_report(clone, audit, tmp_path):
    page = tmp_path / "audit.html"
    result = audit("--html", str(page), json_out=False)
    assert result.code == 0, result.out + result.err
    assert "CLEAN" in result.out and f"report written to {page}" in result.out
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == 3  # burn-down, runs, subgroups
    assert "Content-Security-Policy" in text and "http://" not in text and "https://" not in text
    assert "Privacy statement" in text


def test_an_edited_row_is_found(clone, audit):
    # lower the steps a commit charged, directly in the database
    entry = next(e for e in _entries(clone) if e["kind"] == "commit")
    payload = dict(entry["payload"])
    payload["mechanism"] = dict(payload["mechanism"], steps=1)
    payload["steps"] = 1
    clone.sql(
        "UPDATE dpgov_entries SET payload = :p WHERE seq = :s", p=canonical(payload), s=entry["seq"]
    )
    result = audit()
    assert result.code == 1
    chain = _one(result, "chain_broken")
    assert chain["seq"] == entry["seq"] and "does not match its hash" in chain["detail"]
    assert "projection_mismatch" in result.kinds()  # the projection still holds the truth


def test_a_deleted_row_is_found(clone, audit):
    approval = next(e for e in _entries(clone) if e["kind"] == "approval")
    clone.sql("DELETE FROM dpgov_entries WHERE seq = :s", s=approval["seq"])
    result = audit()
    assert result.code == 1
    assert _one(result, "chain_broken")["seq"] == approval["seq"]
    assert "release_without_approvals" in result.kinds()


def test_a_rewritten_chain_is_found_through_the_anchors(clone, audit):
    """Someone with database access but no anchor store lowers a charge and recomputes every
    hash after it, and the projections too: the chain verifies, the anchors do not."""
    rows = _entries(clone)
    reservation = next(e for e in rows if e["kind"] == "reservation")
    forged_mech = dict(reservation["payload"]["mechanism"], noise_multiplier=50.0)
    prev = None
    for e in rows:
        if e["seq"] < reservation["seq"]:
            prev = e["hash"]
            continue
        payload = e["payload"]
        if e["seq"] == reservation["seq"]:
            payload = dict(payload, mechanism=forged_mech)
        elif (
            e["kind"] == "commit"
            and payload["reservation"] == reservation["payload"]["reservation"]
        ):
            payload = dict(payload, mechanism=dict(forged_mech, steps=payload["steps"]))
        digest = entry_hash(
            seq=e["seq"],
            kind=e["kind"],
            payload=payload,
            time=e["time"],
            actor=e["actor"],
            prev_hash=prev,
        )
        clone.sql(
            "UPDATE dpgov_entries SET payload = :p, prev_hash = :prev, hash = :h WHERE seq = :s",
            p=canonical(payload),
            prev=prev,
            h=digest,
            s=e["seq"],
        )
        prev = digest
    clone.sql(
        "UPDATE dpgov_reservations SET mechanism = :m WHERE id = :r",
        m=canonical(dict(forged_mech, steps=reservation["payload"]["mechanism"]["steps"])),
        r=reservation["payload"]["reservation"],
    )
    clone.sql("DELETE FROM dpgov_composition_cache")
    from dpgov.ledger import Ledger

    led = Ledger.open(clone.ledger_url)
    assert led.verify().ok  # the rewrite fools the chain on its own
    led.close()
    result = audit()
    assert result.code == 1
    assert "chain_broken" not in result.kinds()
    mismatches = [f for f in result.json["findings"] if f["kind"] == "anchor_mismatch"]
    assert {f["seq"] for f in mismatches} == {a["seq"] for a in _anchors(clone)}
    assert "rewritten" in mismatches[0]["detail"]
    # and the runs' logged cumulative ε no longer matches what the forged entries compose to
    assert "epsilon_mismatch" in result.kinds()


def test_a_truncated_ledger_is_found_through_the_anchors(clone, audit):
    head = max(e["seq"] for e in _entries(clone))
    clone.sql("DELETE FROM dpgov_entries WHERE seq > :s", s=head - 2)
    result = audit()
    assert result.code == 1
    assert "chain_broken" not in result.kinds()
    truncated = _one(result, "ledger_truncated")
    assert truncated["seq"] == head and "2 entries are gone" in truncated["detail"]


def test_an_alias_set_directly_in_mlflow_is_found(clone, audit):
    second = clone.world.runs[1].model_version
    clone.client().set_registered_model_alias(MODEL, "champion", second)
    clone.client().set_registered_model_alias(MODEL, "prod", second)
    result = audit()
    assert result.code == 1
    found = [f for f in result.json["findings"] if f["kind"] == "alias_outside_gate"]
    assert {(f["alias"], f["version"]) for f in found} == {("champion", second), ("prod", second)}
    assert result.json["releases"] == []


def test_an_alias_moved_outside_the_gate_and_back_through_it_is_found(clone, audit):
    from dpgov.gate.promotion import promote
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.tracking.registry import Registry

    first, second = (r.model_version for r in clone.world.runs)
    clone.client().set_registered_model_alias(MODEL, "champion", second)
    led = Ledger.open()
    promote(
        model=MODEL,
        version=first,
        policy=load_policy(clone.policy),
        ledger=led,
        registry=Registry(),
    )
    led.close()
    result = audit("--anchor")
    assert result.code == 1
    finding = _one(result, "alias_outside_gate")
    assert f"found it on version {second}" in finding["detail"]
    assert "moved outside the gate in between" in finding["detail"]
    assert result.json["anchored"]["recorded"] is True  # --anchor sealed the new head


def test_a_run_logged_without_ledger_charges_is_found(clone, audit):
    client = clone.client()
    exp = client.get_experiment_by_name("audit-tests").experiment_id
    run = client.create_run(exp, run_name="dp-outside", tags={"dpgov.private": "true"})
    client.log_param(run.info.run_id, "noise_multiplier", "0.8")
    client.log_metric(run.info.run_id, "epsilon", 4.2)
    client.set_terminated(run.info.run_id)
    result = audit()
    assert result.code == 1
    found = _one(result, "run_without_charges")
    assert found["run_id"] == run.info.run_id and "never charged" in found["detail"]


def test_a_run_left_running_after_its_commit_is_found(clone, audit):
    # what a process killed (or cut off from MLflow) after the ledger commit leaves behind
    run_id = clone.world.runs[1].run_id
    clone.client().update_run(run_id, status="RUNNING")
    result = audit()
    assert result.code == 1
    found = _one(result, "run_left_running")
    assert found["run_id"] == run_id and "committed" in found["detail"]
    assert result.kinds() == {"run_left_running"}  # the charge itself is in order


def test_a_false_cumulative_epsilon_logged_to_mlflow_is_found(clone, audit):
    from dpgov.contracts import block_metric_key

    run_id, block = clone.world.runs[1].run_id, _blocks(clone)[-1]
    clone.client().log_metric(run_id, block_metric_key(block), 0.5)  # the latest value wins
    result = audit()
    assert result.code == 1
    found = _one(result, "epsilon_mismatch")
    assert found["run_id"] == run_id and found["block"] == block


def test_a_tampered_projection_is_found(clone, audit):
    reservation = next(e for e in _entries(clone) if e["kind"] == "reservation")
    forged = dict(reservation["payload"]["mechanism"], steps=1)
    clone.sql(
        "UPDATE dpgov_reservations SET mechanism = :m WHERE id = :r",
        m=canonical(forged),
        r=reservation["payload"]["reservation"],
    )
    result = audit()
    assert result.code == 1
    assert (
        _one(result, "projection_mismatch")["reservation"]
        == (reservation["payload"]["reservation"])
    )
    # the ledger's own figures come from the chained entries, never from the tampered table:
    # the spend it reports agrees with the replay, so the edit is a projection finding only
    assert not [f for f in result.json["findings"] if f["kind"] == "epsilon_mismatch"]


def test_data_gone_from_dvc_is_found(clone, audit):
    import shutil

    shutil.rmtree(clone.repo / ".dvc" / "cache")
    (clone.repo / "data" / "prepared" / "synth.dvc").unlink()
    result = audit()
    assert result.code == 1
    found = _one(result, "data_version_unknown")
    assert found["data_version"] == clone.world.data_version


def test_a_crashed_run_left_pending_is_found(clone, audit):
    from dpgov.accounting import DpSgdMechanism
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy

    loaded = load_policy(clone.policy)
    led = Ledger.open()
    res = led.reserve(
        dataset="synth",
        blocks=[_blocks(clone)[-1]],
        budget=loaded.policy.budget,
        mechanism=DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.1, steps=5),
        policy_sha256=loaded.sha256,
        data_version=clone.world.data_version,
    )
    led.close()
    fresh = audit()  # a run may still be training: listed, not a finding
    assert fresh.code == 0, fresh.out
    assert [r["reservation"] for r in fresh.json["reservations"]["pending"]] == [res.id]
    stale = audit("--stale-hours", "0")
    assert stale.code == 1
    assert _one(stale, "reservation_pending")["reservation"] == res.id


def test_a_corrupted_row_is_a_finding_not_a_traceback(clone, audit):
    entry = next(e for e in _entries(clone) if e["kind"] == "reservation")
    clone.sql(
        "UPDATE dpgov_entries SET payload = :p WHERE seq = :s", p='{"reservation": ', s=entry["seq"]
    )
    result = audit()
    assert result.code == 1 and "Traceback" not in result.err
    assert _one(result, "row_corrupted")["seq"] == entry["seq"]
    assert _one(result, "chain_broken")["seq"] == entry["seq"]
    human = audit(json_out=False)
    assert human.code == 1 and "row_corrupted" in human.out and "Traceback" not in human.err


def test_an_unreadable_tracking_store_is_a_finding(clone, audit):
    (clone.home / "mlflow.db").write_bytes(b"this is not a database" * 100)
    result = audit()
    assert result.code == 1 and "Traceback" not in result.err
    found = _one(result, "tracking_unavailable")
    assert "is not a SQLite database" in found["detail"]
    assert result.json["ledger"]["chain_ok"] is True  # the ledger checks still ran


def test_a_tracking_server_that_does_not_answer_is_a_finding(clone, audit, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    result = audit()
    assert result.code == 1 and "Traceback" not in result.err
    assert "http://127.0.0.1:1 is unreadable" in _one(result, "tracking_unavailable")["detail"]


def test_an_html_path_in_a_missing_folder_is_exit_2(clone, audit, tmp_path):
    result = audit("--html", str(tmp_path / "nope" / "audit.html"))
    assert result.code == 2 and "does not exist; nothing written" in result.err


def test_since_leaves_out_older_run_findings_but_never_integrity(clone, audit):
    clone.client().set_registered_model_alias(MODEL, "prod", clone.world.runs[1].model_version)
    result = audit("--stale-hours", "0", "--since", "2999-01-01")
    assert result.code == 1
    assert result.kinds() == {"alias_outside_gate"}  # timeless
    assert result.json["runs"] == []
    bad = audit("--since", "yesterday")
    assert bad.code == 2 and "--since 'yesterday'" in bad.err


def test_anchor_option_records_the_head(clone, audit):
    before = len(_anchors(clone))
    result = audit("--anchor")
    assert result.code == 0, result.out
    assert result.json["anchored"]["recorded"] is True
    assert len(_anchors(clone)) == before + 1


# ------------------------------------------------------------------------------------ helpers


def _entries(clone) -> list[dict]:
    import sqlite3

    with sqlite3.connect(clone.home / "ledger.db") as conn:
        rows = conn.execute(
            "SELECT seq, kind, payload, time, actor, prev_hash, hash "
            "FROM dpgov_entries ORDER BY seq"
        ).fetchall()
    return [
        {
            "seq": s,
            "kind": k,
            "payload": json.loads(p),
            "time": t,
            "actor": a,
            "prev_hash": ph,
            "hash": h,
        }
        for s, k, p, t, a, ph, h in rows
    ]


def _blocks(clone) -> list[str]:
    """The world's blocks, by name."""
    return sorted(e["payload"]["block"] for e in _entries(clone) if e["kind"] == "block_added")


def _anchors(clone) -> list[dict]:
    from dpgov.tracking.anchor import anchors

    return [a.to_dict() for a in anchors(tracking_uri=clone.tracking_uri)]


def _one(result, kind: str) -> dict:
    found = [f for f in result.json["findings"] if f["kind"] == kind]
    assert found, f"no {kind} finding in {json.dumps(result.json['findings'], indent=1)}"
    return found[0]
