"""`dpgov run` and `dpgov demo` output at 80 columns (issue 22, item 4), renderers on their own:
the gate as `dpgov gate` prints it, the demo's single-user release, the retraining waves. The
whole demo output, through the command line, is in tests/integration/cli/test_demo_approver.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from dpgov.cli._output import eps_up
from tests.unit.gate.gate_factories import approval, facts, ledger_facts, policy

AUTHOR = "alice"
LONG_POLICY = "/home/someone/projects/hospital-cohort/.dpgov/demo/release-policy.yaml"


@pytest.fixture
def narrow(monkeypatch, capsys):
    """Render at 80 columns and return the lines printed, each checked to fit and to cut
    nothing but the policy's hash."""
    monkeypatch.setenv("COLUMNS", "80")

    def lines() -> list[str]:
        out = capsys.readouterr().out.splitlines()
        assert out
        for line in out:
            assert len(line.rstrip()) <= 80, line
            assert "…" not in line or "sha256" in line, line
        return out

    return lines


def _decision(pol: Any, approvals: list[Any], **kw: Any) -> dict[str, Any]:
    from dpgov.gate.decision import evaluate

    d = evaluate(
        pol,
        facts(author=AUTHOR, **kw),
        ledger_facts(),
        approvals,
        policy_sha256="ab" * 32,
        run_status="FINISHED",
    )
    return {**d.to_dict(), "ledger_seq": 12, "policy_path": LONG_POLICY}


def test_a_runs_gate_prints_as_dpgov_gate_does(narrow) -> None:
    from dpgov.cli.run import _render_gate, decision_of

    data = _decision(policy(), [])
    assert decision_of(data).to_dict() == {
        k: v for k, v in data.items() if k not in ("ledger_seq", "policy_path")
    }  # the table is made from the very decision that was recorded
    _render_gate(data)
    lines = narrow()
    for c in data["checks"]:  # one row per check, starting with its result and its name
        assert any(ln.split()[:2] == ["ok" if c["passed"] else "FAIL", c["name"]] for ln in lines)
    assert "gate decision recorded: ledger entry 12" in lines
    assert any(ln.startswith("next: ") for ln in lines)
    assert len(lines) <= 2.5 * len(data["checks"])


def test_the_demos_single_user_release_says_the_author_approved(narrow) -> None:
    from dpgov.cli._release_view import render_release
    from dpgov.cli.run import _render_gate

    pol = policy(
        approvals={"allow_author": True},
        fairness={"max_fnr_gap": None, "max_auroc_gap": None},
    )
    before = _decision(pol, [])
    statement = (
        f"Approved by the run's own author ({AUTHOR}), as the policy in force allowed "
        "(approvals.allow_author: true): no second person reviewed this release."
    )
    release = {
        "policy_file": LONG_POLICY,
        "policy_seq": 10,
        "policy_sha256": "cd" * 32,
        "policy_reason": "dpgov demo: single-user release policy. " + "a reason " * 30,
        "author_may_approve": True,
        "approver": None,
        "gate_before": before,
        "approval": {"by": AUTHOR, "ledger_seq": 13, "authenticated_by": "os-user"},
        "promotion": {
            "model": before["model"],
            "version": before["version"],
            "alias": "champion",
            "promotion_seq": 15,
            "decision_seq": 14,
        },
        "status": f"shipped: {before['model']} version {before['version']} is @champion",
        "statement": {"approvers": [AUTHOR], "self_approval": statement},
        "audit": {"ok": True, "findings": []},
    }
    render_release(release, _render_gate)
    lines = narrow()
    flat = " ".join(" ".join(lines).split())
    assert "approvals: the run's author may approve (approvals.allow_author: true)" in flat
    assert f"the run's author ({AUTHOR}) may approve" in flat  # the gate's approvals line
    assert f"approved by {AUTHOR} (the author; ledger entry 13)" in flat
    assert "statement: " + statement in flat
    assert "fnr_gap:sex, fnr_gap:age_band off in policy (why: above)" in flat
    assert "fnr_gap_widening:sex on, limit 0.05: pass" in flat
    assert "audit: CLEAN, 0 findings" in flat


RETIRED_AFTER = {"1995": 1, "1996": 1, "1997": 2}  # the wave after which a block is retired


def _wave(i: int, new: list[str], trained: list[str], retire: list[str], gate: Any) -> Any:
    budgets = [
        {"block": b, "state": "retired" if RETIRED_AFTER.get(b, 9) <= i else "open",
         "epsilon_spent": 2.5123, "charges": 1}
        for b in ("1995", "1996", "1997", "1998-2003")[: 2 + i]
    ]  # fmt: skip
    return {
        "wave": i,
        "enrollment": [1995 + i, 1996 + i],
        "ingest": {"new_blocks": new},
        "retraining": {
            "status": "trained",
            "selection": {"retire": [{"block": b} for b in retire]},
            "run": {
                "plan": {"blocks": trained, "noise_multiplier": 1.234},
                "epsilon": 1.9876,
                "auroc": 0.8123,
                "gate": gate,
            },
            "budgets": budgets,
        },
    }


def test_the_retraining_waves_fit_80_columns(narrow) -> None:
    from dpgov.cli.run import _render_waves

    gate = _decision(policy(), [approval("bob", 9)])
    waves = [
        _wave(0, ["1995", "1996"], ["1995", "1996"], [], gate),
        _wave(1, ["1997"], ["1997"], ["1995", "1996"], gate),
        _wave(2, ["1998-2003"], ["1998-2003"], ["1997"], gate),
    ]
    _render_waves(
        {
            "dataset": "flchain-waves",
            "waves": waves,
            "epsilon_per_block": 2.6,
            "policy": LONG_POLICY,
            "folder": "/home/someone/projects/hospital-cohort/.dpgov/demo/waves/20261201T1700Z",
            "gate": gate,
            "orchestration": {"flow_seconds": 61.2, "api_seconds": 9.8},
        }
    )
    lines = narrow()
    rows = [ln for ln in lines if ln.split()[:1] in (["0"], ["1"], ["2"])]
    assert [r.split()[1] for r in rows] == ["1995–1996", "1996–1997", "1997–1998"]
    run_eps, spent = eps_up(1.9876), eps_up(2.5123)  # spent ε is shown rounded up
    assert all(run_eps in r.split() and "0.812" in r.split() for r in rows)
    assert ["1995", spent, "(1)", spent, "(1)", "R", spent, "(1)", "R"] in [
        ln.split() for ln in lines
    ]


def test_a_decision_is_rebuilt_whole_from_its_json() -> None:
    """A gate judged on a DP-evaluated release keeps its evaluation summary and noise."""
    from dataclasses import replace

    from dpgov.cli.run import decision_of
    from dpgov.gate.decision import evaluate
    from dpgov.gate.dp_checks import EvaluationSummary

    d = evaluate(policy(), facts(), ledger_facts(), [], policy_sha256="ab" * 32)
    noisy = replace(d.checks[0], noise_scale=0.0123, eta_check=0.001)
    summary = EvaluationSummary(
        private=True, recorded=True, eta=0.05, bounds=6, attempt=1, test_blocks=("test-1995",)
    )
    d = replace(d, checks=(noisy, *d.checks[1:]), evaluation=summary)
    assert decision_of(d.to_dict()) == d


def test_prose_wraps_at_80_columns_as_written(narrow) -> None:
    """`ledger verify`'s summary lines (and any prose printed with it) wrap, whole and
    unmarked: brackets and URLs stay as written."""
    from dpgov.cli._output import prose

    text = (
        "tables: 8 blocks, 1 reservations, 4 charges, 4 cached states agree with the entries; "
        "[bold]not markup[/bold] at sqlite:///home/someone/.dpgov/ledger.db"
    )
    prose(text)
    lines = narrow()
    assert len(lines) == 2
    assert " ".join(" ".join(lines).split()) == text


def test_a_dp_evaluated_run_says_so_before_its_figures(narrow) -> None:
    """Under evaluation.private the run output names the release its test figures come from
    (ε, test blocks, attempt, noise), at 80 columns."""
    from dpgov.cli.run import _render

    data: dict[str, Any] = {
        "plan": {
            "delta": 1e-5,
            "accountant": "pld",
            "dataset": "flchain",
            "blocks": ["1995", "1996"],
            "noise_multiplier": 1.1,
            "sample_rate": 0.01,
            "max_grad_norm": 1.0,
        },
        "run_id": "r" * 32,
        "model_name": "dpgov-flchain",
        "model_version": "3",
        "epsilon": 1.2345,
        "steps": 500,
        "block_epsilon": {"1995": 1.3, "1996": 1.3},
        "auroc": 0.8,
        "subgroups": [],
        "gaps": [],
        "private_evaluation": {
            "epsilon": 0.5,
            "delta": 1e-5,
            "sigma": 17.2,
            "test_blocks": ["test-1995", "test-1996"],
            "attempt": 2,
            "eta_check": 0.0031,
        },
    }
    _render(data)
    text = " ".join(" ".join(narrow()).split())
    assert "test metrics DP-evaluated: ε = 0.5" in text
    assert "test-1995, test-1996 (attempt 2" in text
    data.pop("private_evaluation")
    _render(data)
    assert "DP-evaluated" not in " ".join(narrow())
