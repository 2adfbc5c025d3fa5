"""The policy in force is ledger state (issue 13, item 1): no caller chooses the policy.

Each attack of the issue as a test: a lax policy passed to a command that charges, a second
``budget:`` key, a set by someone who may not, a raise over charged blocks without approvals,
a lax ``policies/default.yaml`` in the working directory, and a reservation written under a
policy that was not in force (found by the audit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpgov.accounting import DpSgdMechanism
from dpgov.errors import Refused, UsageError
from dpgov.gate.in_force import policy_at, policy_in_force
from dpgov.ledger import Ledger
from dpgov.ledger.policies import approve_proposal, policy_history, set_policy
from dpgov.policy import load_policy
from dpgov.policy.load import packaged_policy_path
from dpgov.report.checks.policy_in_force import check_policy_in_force
from dpgov.report.ledger_snapshot import snapshot_ledger
from dpgov.testing.policies import put_in_force, write_policy
from tests.cli import run_dpgov

PACKAGED_SHA = load_policy(packaged_policy_path()).sha256
MECH = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=100)  # ε ≈ 0.72 at 1e-5
BIG = DpSgdMechanism(noise_multiplier=0.6, sample_rate=0.05, steps=300)  # ε far above 8


def _as(monkeypatch: pytest.MonkeyPatch, who: str) -> None:
    """Act as ``who``: the identity dpgov authenticates here is the OS user
    (:func:`dpgov.identity.acting_identity`; DPGOV_ACTOR would not change it)."""
    monkeypatch.setattr("dpgov.identity.os_user", lambda: who)


@pytest.fixture
def cli(monkeypatch, capsys, home):
    _as(monkeypatch, "alice")

    def call(*args: str, actor: str | None = None) -> tuple[int, str, str]:
        _as(monkeypatch, actor or "alice")
        try:
            return run_dpgov(monkeypatch, capsys, *args)
        finally:
            _as(monkeypatch, "alice")

    return call


@pytest.fixture
def lax(tmp_path: Path) -> Path:
    return write_policy(
        tmp_path / "lax.yaml",
        budget={"epsilon_per_block": 90.0, "delta": 0.5},
        approvals={"required": 0},
    )


def _entries() -> list:
    ledger = Ledger.open()
    try:
        return ledger.entries()
    finally:
        ledger.close()


def _block(dataset: str = "d", block: str = "b1") -> None:
    ledger = Ledger.open()
    try:
        ledger.add_block(dataset=dataset, block=block, patients=1000, actor="alice")
    finally:
        ledger.close()


RESERVE = ["--block", "b1", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "100"]


# ---------------------------------------------------------------------- no caller-chosen policy


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["ledger", "reserve", "--dataset", "d", *RESERVE],
        ["sweep", "--epsilons", "1"],
        ["budget"],
        ["audit"],
        ["ledger", "verify"],
        ["data", "validate"],
        ["schedule", "--cron", "0 3 * * *"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_policy_on_an_enforcing_command_is_a_usage_error_and_nothing_is_charged(cli, lax, command):
    _block()
    before = len(_entries())
    code, _out, err = cli(*command, "--policy", str(lax))
    assert code == 2, err
    assert "dpgov policy set" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert len(_entries()) == before  # nothing charged or recorded


def test_reserve_enforces_the_policy_in_force_not_a_file(cli, lax):
    _block()
    code, _out, err = cli("ledger", "reserve", "--dataset", "d", *RESERVE, "--json")
    assert code == 0, err
    entry = next(e for e in _entries() if e.kind == "reservation")
    assert entry.payload["policy_sha256"] == PACKAGED_SHA
    assert entry.payload["budget"]["epsilon_per_block"] == 8.0


def test_a_sweep_that_charges_takes_no_policy_file(cli, lax):
    code, _, err = cli("sweep", "--epsilons", "1", "--policy", str(lax))
    assert code == 2 and "--dry-run" in err and "dpgov policy set" in err


def test_a_governed_run_refuses_a_policy_that_is_not_in_force(dpgov_home, lax):
    from dpgov.training.governed import enforced_policy
    from dpgov.training.params import parse_params

    ledger = Ledger.open()
    try:
        params = parse_params({"data": {"dataset": "d"}})
        with pytest.raises(UsageError, match="not the policy in force"):
            enforced_policy(ledger, params, load_policy(lax))
        assert enforced_policy(ledger, params).sha256 == PACKAGED_SHA
        put_in_force(lax, ledger=ledger, dataset="d")
        assert enforced_policy(ledger, params, load_policy(lax)).seq is not None  # the recorded one
    finally:
        ledger.close()


# ---------------------------------------------------------------------- the packaged default


def test_the_packaged_policy_is_in_force_on_a_fresh_ledger_even_with_a_lax_working_copy(
    cli, lax, tmp_path, monkeypatch
):
    work = tmp_path / "work"
    (work / "policies").mkdir(parents=True)
    (work / "policies" / "default.yaml").write_text(lax.read_text())
    monkeypatch.chdir(work)
    code, out, err = cli("policy", "show", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["sha256"] == PACKAGED_SHA and shown["source"] == "packaged"
    assert Path(shown["file"]) == packaged_policy_path()
    assert shown["policy"]["budget"]["epsilon_per_block"] == 8.0
    _block()
    big = ["--noise-multiplier", "0.6", "--sample-rate", "0.05", "--steps", "300"]
    code, _, err = cli("ledger", "reserve", "--dataset", "d", "--block", "b1", *big)
    assert code == 1, err  # over the packaged 8, though the working copy allows 90


# ---------------------------------------------------------------------- policy set


def test_policy_set_records_content_hash_scope_reason_and_actor(cli, lax):
    code, out, err = cli("policy", "set", str(lax), "--reason", "wider study", "--json")
    assert code == 0, err
    assert json.loads(out)["action"] == "set"
    entry = _entries()[-1]
    assert entry.kind == "policy_set" and entry.actor == "alice"
    p = entry.payload
    assert p["identity"] == "alice" and p["authenticated_by"] == "os-user"
    assert p["policy"]["yaml"] == lax.read_text()
    assert p["policy"]["sha256"] == load_policy(lax).sha256
    assert p["policy"]["json"]["budget"]["epsilon_per_block"] == 90.0
    assert p["dataset"] is None and p["reason"] == "wider study"
    code, out, _ = cli("policy", "show", "--json")
    shown = json.loads(out)
    assert shown["seq"] == entry.seq and shown["set_by"] == "alice"
    code, out, _ = cli("policy", "history", "--json")
    assert [c["seq"] for c in json.loads(out)["changes"]] == [entry.seq]


def test_a_second_budget_key_is_refused_by_policy_set(cli, tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text(
        "version: 1\nbudget:\n  epsilon_per_block: 1.0\n  delta: 1.0e-5\n"
        "budget:\n  epsilon_per_block: 100\n  delta: 0.5\n"
    )
    code, _, err = cli("policy", "set", str(bad), "--reason", "x")
    assert code == 2 and "duplicate key 'budget'" in err
    assert _entries() == []


def test_policy_set_needs_a_reason(cli, lax):
    code, _, err = cli("policy", "set", str(lax), "--reason", "  ")
    assert code == 2 and "--reason" in err
    assert _entries() == []


def test_dpgov_actor_does_not_make_someone_a_policy_setter(cli, lax, monkeypatch):
    assert cli("policy", "set", str(lax), "--reason", "first")[0] == 0
    monkeypatch.setenv("DPGOV_ACTOR", "alice")  # a label only: the OS user is mallory
    code, _, err = cli("policy", "set", str(lax), "--reason", "as alice?", actor="mallory")
    assert code == 1 and "mallory may not set the policy" in err


def test_a_later_set_by_someone_else_is_refused(cli, lax, tmp_path):
    assert cli("policy", "set", str(lax), "--reason", "first")[0] == 0
    code, _, err = cli("policy", "set", str(lax), "--reason", "mine now", actor="mallory")
    assert code == 1 and "mallory may not set the policy" in err
    assert [e.kind for e in _entries()] == ["policy_set"]
    assert cli("policy", "set", str(lax), "--reason", "again")[0] == 0  # the first setter may


def test_policy_setters_name_who_may_set_later(cli, tmp_path):
    named = write_policy(tmp_path / "named.yaml", governance={"policy_setters": ["carol"]})
    assert cli("policy", "set", str(named), "--reason", "carol sets from now on")[0] == 0
    code, _, err = cli("policy", "set", str(named), "--reason", "still me?")
    assert code == 1 and "carol" in err  # the first setter is no longer named
    assert cli("policy", "set", str(named), "--reason", "ok", actor="carol")[0] == 0


# ---------------------------------------------------------------------- raising a limit


def test_raising_the_budget_over_charged_blocks_waits_for_approval(cli, tmp_path):
    _block()
    assert cli("ledger", "reserve", "--dataset", "d", *RESERVE)[0] == 0
    more = write_policy(tmp_path / "more.yaml", budget={"epsilon_per_block": 50.0})
    code, out, err = cli("policy", "set", str(more), "--reason", "more", "--json")
    assert code == 0, err
    proposal = json.loads(out)
    assert proposal["action"] == "propose" and not proposal["in_force"]
    assert any("epsilon_per_block 8 → 50" in r for r in proposal["raises"])
    _, out, _ = cli("budget", "--json")
    assert json.loads(out)["datasets"][0]["blocks"][0]["epsilon_limit"] == 8.0  # not yet
    big = ["--noise-multiplier", "0.6", "--sample-rate", "0.05", "--steps", "300"]
    assert cli("ledger", "reserve", "--dataset", "d", "--block", "b1", *big)[0] == 1

    code, _, err = cli("policy", "approve", str(proposal["seq"]))  # the proposer
    assert code == 1 and "proposed it" in err
    code, out, err = cli("policy", "approve", str(proposal["seq"]), "--json", actor="bob")
    assert code == 0, err
    assert json.loads(out)["status"] == "in force"
    _, out, _ = cli("budget", "--json")
    assert json.loads(out)["datasets"][0]["blocks"][0]["epsilon_limit"] == 50.0
    code, _, err = cli("policy", "approve", str(proposal["seq"]), actor="dave")
    assert code == 1 and "in force" in err  # nothing left to approve


def test_raising_the_budget_before_any_charge_takes_effect_at_once(cli, tmp_path):
    _block()
    more = write_policy(tmp_path / "more.yaml", budget={"epsilon_per_block": 50.0})
    code, out, err = cli("policy", "set", str(more), "--reason", "before training", "--json")
    assert code == 0 and json.loads(out)["action"] == "set", err


def test_lowering_a_limit_needs_no_approval(cli, tmp_path):
    _block()
    assert cli("ledger", "reserve", "--dataset", "d", *RESERVE)[0] == 0
    less = write_policy(tmp_path / "less.yaml", budget={"epsilon_per_block": 4.0})
    code, out, _ = cli("policy", "set", str(less), "--reason", "tighter", "--json")
    assert code == 0 and json.loads(out)["action"] == "set"


def test_a_proposal_lapses_when_another_policy_takes_effect(ledger_url, tmp_path):
    """On SQLite and PostgreSQL: approvals of a lapsed proposal change nothing."""
    ledger = Ledger.open(ledger_url)
    try:
        ledger.add_block(dataset="d", block="b1", patients=1000, actor="alice")
        pol = policy_in_force(ledger, "d")
        ledger.reserve(
            dataset="d", blocks=["b1"], mechanism=MECH, budget=pol.policy.budget,
            policy_sha256=pol.sha256, actor="alice",
        )  # fmt: skip
        more = load_policy(write_policy(tmp_path / "m.yaml", budget={"epsilon_per_block": 50.0}))
        less = load_policy(write_policy(tmp_path / "l.yaml", budget={"epsilon_per_block": 4.0}))
        entry, action = set_policy(ledger, more, dataset=None, reason="more", actor="alice")
        assert action == "propose"
        set_policy(ledger, less, dataset=None, reason="less", actor="alice")
        with pytest.raises(Refused, match="lapsed"):
            approve_proposal(ledger, entry.seq, actor="bob")
        assert policy_in_force(ledger, "d").policy.budget.epsilon_per_block == 4.0
        assert policy_history(ledger).proposals[entry.seq].status == "lapsed"
    finally:
        ledger.close()


# ---------------------------------------------------------------------- scope


def test_a_dataset_policy_overrides_the_ledger_wide_one_for_that_dataset_only(cli, tmp_path):
    _block("d1")
    _block("d2")
    own = write_policy(tmp_path / "own.yaml", budget={"epsilon_per_block": 3.0})
    code, _, err = cli("policy", "set", str(own), "--dataset", "d1", "--reason", "small cohort")
    assert code == 0, err
    _, out, _ = cli("budget", "--json")
    limits = {d["dataset"]: d["blocks"][0]["epsilon_limit"] for d in json.loads(out)["datasets"]}
    assert limits == {"d1": 3.0, "d2": 8.0}
    _, out, _ = cli("policy", "show", "--dataset", "d1", "--json")
    assert json.loads(out)["dataset"] == "d1"
    _, out, _ = cli("policy", "show", "--dataset", "d2", "--json")
    assert json.loads(out)["sha256"] == PACKAGED_SHA
    code, out, err = cli("ledger", "reserve", "--dataset", "d1", *RESERVE, "--json")
    assert code == 0, err
    res = [e for e in _entries() if e.kind == "reservation"][-1]
    assert res.payload["policy_sha256"] == load_policy(own).sha256


# ---------------------------------------------------------------------- the audit


def _policy_findings(ledger: Ledger) -> list:
    snap = snapshot_ledger(ledger, policy_in_force(ledger).policy.budget)
    return check_policy_in_force(snap.rows)


def test_the_audit_finds_a_reservation_made_under_a_policy_not_in_force(dpgov_home, tmp_path):
    ledger = Ledger.open()
    try:
        ledger.add_block(dataset="d", block="b1", patients=1000, actor="alice")
        pol = policy_in_force(ledger, "d")
        ledger.reserve(
            dataset="d", blocks=["b1"], mechanism=MECH, budget=pol.policy.budget,
            policy_sha256=pol.sha256, actor="alice",
        )  # fmt: skip
        assert _policy_findings(ledger) == []  # made under the policy in force
        lax = write_policy(tmp_path / "lax.yaml", budget={"epsilon_per_block": 90.0})
        loose = load_policy(lax)  # never set: the ledger API lets a caller pass it
        ledger.reserve(
            dataset="d", blocks=["b1"], mechanism=BIG, budget=loose.policy.budget,
            policy_sha256=loose.sha256, actor="alice",
        )  # fmt: skip
        found = _policy_findings(ledger)
        assert [f.kind for f in found] == ["policy_not_in_force"]
        assert "would have been refused" in found[0].detail
        assert found[0].where["seq"] == ledger.head()[0]
    finally:
        ledger.close()


def test_each_entry_is_judged_by_the_policy_in_force_when_it_was_written(dpgov_home, tmp_path):
    ledger = Ledger.open()
    try:
        ledger.add_block(dataset="d", block="b1", patients=1000, actor="alice")
        first = policy_in_force(ledger, "d")
        r1 = ledger.reserve(
            dataset="d", blocks=["b1"], mechanism=MECH, budget=first.policy.budget,
            policy_sha256=first.sha256, actor="alice",
        )  # fmt: skip
        tight = load_policy(write_policy(tmp_path / "t.yaml", budget={"epsilon_per_block": 4.0}))
        set_policy(ledger, tight, dataset=None, reason="tighter", actor="alice")
        r2 = ledger.reserve(
            dataset="d", blocks=["b1"], mechanism=MECH, budget=tight.policy.budget,
            policy_sha256=tight.sha256, actor="alice",
        )  # fmt: skip
        assert policy_at(ledger, "d", r1.seq).sha256 == PACKAGED_SHA
        assert policy_at(ledger, "d", r2.seq).sha256 == tight.sha256
        assert _policy_findings(ledger) == []
        ledger.reserve(  # the old policy, once another is in force
            dataset="d", blocks=["b1"], mechanism=MECH, budget=first.policy.budget,
            policy_sha256=first.sha256, actor="alice",
        )  # fmt: skip
        assert [f.kind for f in _policy_findings(ledger)] == ["policy_not_in_force"]
    finally:
        ledger.close()


def test_the_audit_names_a_gate_decision_under_a_policy_not_in_force(dpgov_home, lax):
    ledger = Ledger.open()
    try:
        ledger.append(kind="gate_decision", payload={"policy_sha256": PACKAGED_SHA}, actor="a")
        assert _policy_findings(ledger) == []
        ledger.append(
            kind="promotion",
            payload={"policy_sha256": load_policy(lax).sha256, "model": "m", "version": "2"},
            actor="a",
        )
        found = _policy_findings(ledger)
        assert [f.kind for f in found] == ["policy_not_in_force"]
        assert found[0].where["model"] == "m"
    finally:
        ledger.close()


def test_an_edited_policy_entry_stops_everything_that_enforces_it(cli, home, tmp_path):
    """The policy in force is read from hash-checked entries: a policy_set entry edited in the
    database (a higher ε per block) is not enforced; reserve refuses (exit 1), nothing written."""
    import sqlite3

    _block()
    tight = write_policy(tmp_path / "tight.yaml", budget={"epsilon_per_block": 4.0})
    assert cli("policy", "set", str(tight), "--reason", "tight")[0] == 0
    entry = _entries()[-1]
    payload = dict(entry.payload)
    text = payload["policy"]["yaml"].replace("epsilon_per_block: 4.0", "epsilon_per_block: 99.0")
    payload["policy"] = {**payload["policy"], "yaml": text}
    con = sqlite3.connect(home / "ledger.db")
    con.execute("DROP TRIGGER dpgov_entries_no_update")
    con.execute(
        "UPDATE dpgov_entries SET payload = ? WHERE seq = ?",
        (json.dumps(payload, sort_keys=True, separators=(",", ":")), entry.seq),
    )
    con.commit()
    con.close()
    code, _, err = cli("ledger", "reserve", "--dataset", "d", *RESERVE)
    assert code == 1 and "cannot be trusted" in err and f"entry {entry.seq}" in err
    assert not [e for e in _entries() if e.kind == "reservation"]


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ({"composition": "fixed"}, "budget.composition adaptive → fixed"),
        ({"composition_by_domain": {"d": "fixed"}}, "budget.composition_by_domain[d]"),
        ({"orders": [2.0, 4.0, 8.0, 16.0, 32.0]}, "budget.orders"),
    ],
)
def test_loosening_the_composition_rule_over_charged_blocks_waits_for_approval(
    cli, tmp_path, budget, says
):
    """Tight PLD of a fixed schedule reads the same charges as less than the RDP filter, and
    another order grid changes every filter figure: over patients with charges, each is a
    proposal that waits for approval, like a larger ε."""
    _block()
    assert cli("ledger", "reserve", "--dataset", "d", *RESERVE)[0] == 0
    looser = write_policy(tmp_path / "looser.yaml", budget=budget)
    code, out, err = cli("policy", "set", str(looser), "--reason", "looser", "--json")
    assert code == 0, err
    proposal = json.loads(out)
    assert proposal["action"] == "propose" and not proposal["in_force"]
    assert any(says in r for r in proposal["raises"]), proposal["raises"]


def test_a_dataset_policy_cannot_change_the_composition_rule(cli, tmp_path):
    """The rule is set for the whole ledger or per id domain, never per dataset: a patient
    may span datasets."""
    _block()
    own = write_policy(tmp_path / "own.yaml", budget={"composition": "fixed"})
    code, _, err = cli("policy", "set", str(own), "--dataset", "d", "--reason", "mine")
    assert code == 2 and "set for the whole ledger" in err and err.count("\n") == 1, err
    assert Ledger.open().entries(kind="policy_set") == []
    same = write_policy(tmp_path / "same.yaml", budget={"epsilon_per_block": 4.0})
    assert cli("policy", "set", str(same), "--dataset", "d", "--reason", "mine")[0] == 0
