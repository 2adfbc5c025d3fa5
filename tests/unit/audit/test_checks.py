"""The audit's pure checks: anchors, releases, runs, pending reservations, policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_factories import M1, Rows, model, run

from dpgov.contracts import block_metric_key
from dpgov.policy import load_policy
from dpgov.report.checks import run_figures
from dpgov.report.checks.anchors import check_anchors
from dpgov.report.checks.pending import check_pending
from dpgov.report.checks.policies import policies_in_force
from dpgov.report.checks.releases import check_releases, gov_entries
from dpgov.report.checks.runs import check_runs, is_dp_run
from dpgov.report.replay import Epsilons, replay
from dpgov.tracking.anchor import Anchor

POLICY = Path(__file__).resolve().parents[3] / "policies" / "default.yaml"


@pytest.fixture(scope="module")
def policy():
    return load_policy(POLICY)


def anchor(seq: int, digest: str, **kw) -> Anchor:
    return Anchor(seq=seq, hash=digest, time="2026-01-01T00:01:00+00:00", run_id=f"a{seq}", **kw)


def ledger_with_commits() -> Rows:
    rows = Rows()
    rows.block("b1")
    rows.reserve("r1", ["b1"])
    rows.commit("r1")
    rows.reserve("r2", ["b1"])
    rows.commit("r2")
    return rows


def kinds(findings) -> list[str]:
    return [f.kind for f in findings]


# ------------------------------------------------------------------------------------ anchors


def test_matching_anchors_pass():
    rows = ledger_with_commits().rows
    found, summary = check_anchors(rows, [anchor(3, rows[2].hash), anchor(5, rows[4].hash)])
    assert found == [] and summary.matched == 2 and summary.unanchored_entries == 0


def test_a_changed_hash_a_missing_entry_and_a_truncation_are_found():
    rows = ledger_with_commits().rows
    kept = [r for r in rows if r.seq != 3]
    found, _ = check_anchors(
        kept[:-1],
        [anchor(2, "0" * 64), anchor(3, rows[2].hash), anchor(5, rows[4].hash)],
    )
    assert kinds(found) == ["anchor_mismatch", "anchor_mismatch", "ledger_truncated"]
    assert "rewritten" in found[0].detail and "missing" in found[1].detail
    assert "its newest 1 entries are gone" in found[2].detail


def test_deleted_anchors_are_found_and_still_checked():
    rows = ledger_with_commits().rows
    found, summary = check_anchors(rows, [anchor(5, rows[4].hash, deleted=True)])
    assert kinds(found) == ["anchor_deleted"] and summary.matched == 1


def test_commits_after_the_newest_anchor_are_a_finding_key_or_no_key():
    rows = ledger_with_commits().rows
    found, summary = check_anchors(rows, [anchor(3, rows[2].hash)])
    assert kinds(found) == ["unanchored_commits"] and "entries 5..5" in found[0].detail
    assert "key or no key" in found[0].detail
    assert summary.unanchored_entries == 2


def test_anchors_a_restore_declared_lost_are_explained_not_a_truncation():
    from dpgov.ledger.chain import Restore

    rows = ledger_with_commits().rows
    restore = Restore(6, 3, rows[2].hash, 5, "2026-01-02T00:00:00+00:00", "dpo")
    kept = rows[:3]  # the backup's entries 1..3; 4 and 5 were lost
    anchors = [anchor(3, rows[2].hash), anchor(5, rows[4].hash)]
    found, summary = check_anchors(kept, anchors, restores=[restore])
    assert found == [] and summary.matched == 1
    found, _ = check_anchors(kept, anchors)  # the same cut, undeclared
    assert kinds(found) == ["ledger_truncated"]


# ----------------------------------------------------------------------------------- releases


def released(rows: Rows) -> Rows:
    rows.approval("m", "1", "alice")
    d = rows.decision("m", "1", approvers=["alice"])
    rows.promotion("m", "1", d.seq)
    return rows


def test_a_release_through_the_gate_passes(policy):
    rows = released(Rows())
    found, releases = check_releases(
        gov_entries(rows.rows), [model("m", {"champion": "1"})], policy
    )
    assert found == []
    (rel,) = releases
    assert rel.check.decision_ok and rel.check.approvals_ok and rel.check.approvals[0].by == "alice"


@pytest.mark.parametrize("aliases", [{"champion": "2"}, {"champion": "1", "prod": "1"}])
def test_aliases_the_ledger_never_promoted_are_found(policy, aliases):
    rows = released(Rows())
    found, _ = check_releases(gov_entries(rows.rows), [model("m", aliases)], policy)
    assert kinds(found) == ["alias_outside_gate"]


def test_a_recall_that_deleted_the_alias_resets_what_the_next_promotion_replaces(policy):
    rows = released(Rows())
    rows.add("alias_deleted", {"model": "m", "alias": "champion", "version": "1", "recall": 9})
    rows.approval("m", "2", "alice")
    d = rows.decision("m", "2", approvers=["alice"])
    rows.promotion("m", "2", d.seq)  # the alias was gone: the promotion replaced nothing
    found, releases = check_releases(
        gov_entries(rows.rows), [model("m", {"champion": "2"})], policy
    )
    assert found == [] and [r.version for r in releases] == ["2"]


def test_an_alias_set_again_after_a_recall_deleted_it_is_found(policy):
    rows = released(Rows())
    rows.add("alias_deleted", {"model": "m", "alias": "champion", "version": "1", "recall": 9})
    found, _ = check_releases(gov_entries(rows.rows), [model("m", {"champion": "1"})], policy)
    assert kinds(found) == ["alias_outside_gate"] and "a recall deleted" in found[0].detail


def test_an_alias_on_a_model_dpgov_never_governed_is_found(policy):
    found, _ = check_releases([], [model("other", {"prod": "1"}, tagged=False)], policy)
    assert kinds(found) == ["alias_outside_gate"]
    assert "never governed by dpgov" in found[0].detail


def test_a_promotion_needs_an_allowing_decision_on_that_version(policy):
    rows = Rows()
    d = rows.decision("m", "1", allowed=False)
    rows.promotion("m", "1", d.seq)
    rows.promotion("m", "2", d.seq, replaced="1")
    found, _ = check_releases(gov_entries(rows.rows), [model("m", {"champion": "2"})], policy)
    assert kinds(found) == ["release_without_decision", "release_without_decision"]
    assert "did not allow" in found[0].detail and "not a gate decision on that" in found[1].detail


def test_a_decision_needs_standing_approvals(policy):
    rows = Rows()
    rows.approval("m", "1", "alice")
    rows.approval("m", "1", "Alice ", kind="refusal")  # her latest word: refused
    d = rows.decision("m", "1", approvers=["alice"], required=2)
    rows.promotion("m", "1", d.seq)
    found, _ = check_releases(gov_entries(rows.rows), [model("m", {"champion": "1"})], policy)
    assert kinds(found) == ["release_without_approvals"]
    detail = found[0].detail
    assert (
        "alice has no standing approval" in detail and "1 approver(s) counted, 2 required" in detail
    )


def test_an_alias_moved_between_promotions_is_found_and_failed_promotions_ignored(policy):
    rows = Rows()
    rows.approval("m", "1", "alice")
    rows.approval("m", "2", "alice")
    d1 = rows.decision("m", "1", approvers=["alice"])
    p1 = rows.promotion("m", "1", d1.seq)
    d2 = rows.decision("m", "2", approvers=["alice"])
    failed = rows.promotion("m", "2", d2.seq, replaced="1")
    rows.add("promotion_failed", {"promotion_seq": failed.seq})
    rows.promotion("m", "2", d2.seq, replaced="3")  # someone had put @champion on v3
    found, releases = check_releases(
        gov_entries(rows.rows), [model("m", {"champion": "2"})], policy
    )
    assert kinds(found) == ["alias_outside_gate"]
    assert "found it on version 3" in found[0].detail
    assert found[0].where["seq"] not in (p1.seq, failed.seq)
    assert releases[0].version == "2"


# --------------------------------------------------------------------------------------- runs


def test_which_runs_count_as_dp():
    assert is_dp_run(run("a", tags={"dpgov.private": "true"}))
    assert not is_dp_run(run("b", tags={"dpgov.private": "false"}, metrics={"epsilon": 1.0}))
    assert is_dp_run(run("c", params={"noise_multiplier": "1.1"}))
    assert is_dp_run(run("d", metrics={"epsilon": 3.0}))
    assert not is_dp_run(run("e", metrics={"auroc": 0.8}))


def test_block_metric_key_is_epsilon_block_and_a_key_mlflow_accepts():
    # training writes and the audit reads this one key (dpgov.contracts)
    keys = [block_metric_key(b) for b in ("1995-1996", "a/b c", "80+", "<50", "é")]
    assert keys == [
        "epsilon_block.1995-1996",
        "epsilon_block.a/b c",
        "epsilon_block.80_",
        "epsilon_block._50",
        "epsilon_block.é",
    ]


def test_runs_against_charges(policy):
    rows = Rows()
    rows.block("b1")
    rows.reserve("r1", ["b1"])
    rows.commit("r1", run_id="run-1")
    rows.reserve("r2", ["b1"])
    rows.commit("r2", run_id="gone")
    r = replay(rows.rows)
    eps = Epsilons()
    own = eps.of([M1], delta=1e-5, accountant="pld")
    runs = [
        run(
            "run-1",
            tags={
                "dpgov.private": "true",
                "dpgov.reservation": "r1",
                "dpgov.blocks": '["b1"]',
                "dpgov.ledger_entries": "[2,3]",
                "dpgov.commit": "3",
            },
            metrics={"epsilon": own, "delta": 1e-5, "epsilon_block.b1": own},
        ),
        run("stray", tags={"dpgov.private": "true"}),
        run(
            "liar",
            tags={"dpgov.private": "true", "dpgov.reservation": "r1", "dpgov.blocks": '["b2"]'},
        ),
    ]
    found, claimed, _ = check_runs(r, runs, eps, policy, tracking_ok=True)
    assert sorted(kinds(found)) == [
        "charge_without_run",
        "run_charge_mismatch",
        "run_charge_mismatch",
        "run_without_charges",
    ]
    liar = [f for f in found if f.kind == "run_charge_mismatch"]
    assert any("both claim reservation r1" in f.detail for f in liar)
    assert any("blocks ['b2']" in f.detail for f in liar)
    assert claimed["r1"].run_id == "run-1"


def test_a_logged_epsilon_that_disagrees_with_the_ledger(policy):
    rows = Rows()
    rows.block("b1")
    rows.reserve("r1", ["b1"])
    rows.commit("r1")
    r = replay(rows.rows)
    bad = run(
        "run-1",
        tags={"dpgov.private": "true", "dpgov.reservation": "r1"},
        metrics={"epsilon": 0.1, "epsilon_block.b1": 0.1},
    )
    found, _, figures = check_runs(r, [bad], Epsilons(), policy, tracking_ok=False)
    assert kinds(found) == ["epsilon_mismatch", "epsilon_mismatch"]
    assert found[1].where["block"] == "b1"
    # compared with the figures the reservation recorded: no composition needed
    assert figures.to_dict() == {"compared_with_recorded": 2, "recomputed": 0, "not_checked": 0}


def test_run_figures_beyond_the_composition_budget_are_counted_not_checked(policy):
    rows = Rows()
    rows.block("b1")
    runs = []
    for i in range(3):
        rows.reserve(f"r{i}", ["b1"])
        done = rows.commit(f"r{i}", M1.with_steps(10 + i))  # partial: no figure recorded
        runs.append(
            run(
                f"run-{i}",
                tags={"dpgov.private": "true", "dpgov.reservation": f"r{i}"},
                metrics={"epsilon_block.b1": 9.9},
                end_time=done.time,  # ended right after its commit
            )
        )
    r = replay(rows.rows)
    budget = run_figures.MAX_RUN_COMPOSITIONS
    run_figures.MAX_RUN_COMPOSITIONS = 1
    try:
        found, _, figures = check_runs(r, runs, Epsilons(), policy, tracking_ok=False)
        _, _, deep = check_runs(r, runs, Epsilons(), policy, tracking_ok=False, deep=True)
    finally:
        run_figures.MAX_RUN_COMPOSITIONS = budget
    assert kinds(found) == ["epsilon_mismatch"]
    assert figures.to_dict() == {"compared_with_recorded": 0, "recomputed": 1, "not_checked": 2}
    assert found[0].where["run_id"] == "run-0"
    assert deep.not_checked == 0 and deep.recomputed >= 3


# ------------------------------------------------------------------------ pending, policies


def test_pending_reservations_become_findings_after_the_grace_period():
    rows = Rows()
    rows.block("b1")
    rows.reserve("r1", ["b1"])
    r = replay(rows.rows)
    reserved = datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)
    found, listing = check_pending(r, now=reserved + timedelta(hours=1), stale_hours=24)
    assert found == [] and listing.pending[0].stale is False
    found, _ = check_pending(r, now=reserved + timedelta(hours=25), stale_hours=24)
    assert kinds(found) == ["reservation_pending"] and "dpgov ledger abort r1" in found[0].detail


def test_policies_in_force_by_hash():
    rows = released(ledger_with_commits())
    (p,) = policies_in_force(rows.rows, "f" * 64)
    assert p.current and p.paths == ["policy.yaml"]
    assert p.entries == {"reservation": 2, "approval": 1, "gate_decision": 1, "promotion": 1}
