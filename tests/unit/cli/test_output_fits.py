"""Output that fits (issue 22, item 4), renderers on their own: the gate's table, the sweep's
tables at 80 columns; the one resolver of short ids."""

from __future__ import annotations

import pytest

from dpgov.cli._output import MAX_CANDIDATES, eps_up, resolve_prefix
from dpgov.errors import UsageError


@pytest.fixture
def narrow(monkeypatch, capsys):
    """Render at 80 columns (as when output is piped) and return the lines printed."""
    monkeypatch.setenv("COLUMNS", "80")

    def lines() -> list[str]:
        out = capsys.readouterr().out.splitlines()
        assert out
        for line in out:
            assert len(line.rstrip()) <= 80, line
        return out

    return lines


def _decision():
    from dpgov.gate.decision import evaluate
    from tests.unit.gate.gate_factories import approval, facts, ledger_facts, policy

    return evaluate(
        policy(),
        facts(),
        ledger_facts(),
        [approval("alice", 10)],
        policy_sha256="ab" * 32,
        run_status="FINISHED",
    )


def test_the_gate_table_is_about_one_line_per_check(narrow) -> None:
    from dpgov.cli.gate import render_decision

    decision = _decision()
    render_decision(decision, "/home/someone/project/policies/default.yaml")
    lines = narrow()
    checks = decision.checks
    # it was 113 lines for these checks (5 columns with borders; reasons in 14 characters)
    assert len(lines) <= 1.7 * len(checks), "\n".join(lines)
    for c in checks:  # each check starts a line with its result and name, then its reason
        start = next(ln for ln in lines if ln.split()[1:2] == [c.name])
        assert start.split()[0] == ("ok" if c.passed else "FAIL")
        assert start.split()[2] == c.reason.split()[0]
    budget = next(ln for ln in lines if "block_budget:" in ln)
    assert "ε spent 2.0000 of 8" in budget  # the reason states the figures it judged
    assert not any("…" in ln for ln in lines[:-2])  # only the policy's hash is shortened


def test_a_wide_gate_table_has_observed_and_limit_columns(monkeypatch, capsys) -> None:
    from dpgov.cli.gate import GATE_WIDE, render_decision

    monkeypatch.setenv("COLUMNS", str(GATE_WIDE))
    decision = _decision()
    render_decision(decision, "policies/default.yaml")
    lines = capsys.readouterr().out.splitlines()
    assert "observed" in lines[1] and "limit" in lines[1]
    budget = next(ln for ln in lines if "block_budget:" in ln)
    assert budget.split()[2:4] == [eps_up(2.0), eps_up(8.0)]


def _iv(mean: float) -> dict[str, float]:
    return {"mean": mean, "lo": mean - 0.04, "hi": mean + 0.03, "sd": 0.012}


def _variant(name: str, eps: float | None, sigma: float | None) -> dict[str, object]:
    return {
        "variant": name,
        "epsilon_spent": eps,
        "noise_multiplier": sigma,
        "seeds": 2,
        "auroc": _iv(0.8123),
        "calibration_error": _iv(0.0421),
        "subgroups": [
            {"attribute": a, "group": g, "n": n, "auroc": _iv(0.79)}
            for a, g, n in (("sex", "F", 412), ("age_band", "70+", 231))
        ],
        "gaps": [
            {"attribute": a, "metric": m, "gap": _iv(0.061)}
            for a in ("sex", "age_band")
            for m in ("auroc", "fnr")
        ],
    }


def test_the_sweep_tradeoff_table_fits_with_four_variants(narrow) -> None:
    from dpgov.cli._output import console
    from dpgov.cli.sweep import tradeoff_table

    summary = [
        _variant("ε=1", 0.9987, 3.1234),
        _variant("ε=3", 2.9871, 1.2345),
        _variant("ε=8", 7.9912, 0.7123),
        _variant("non-private", None, None),
    ]
    console().print(tradeoff_table(summary))
    lines = narrow()
    text = "\n".join(lines)
    assert "…" not in text
    eps_row = next(ln for ln in lines if ln.startswith("ε spent per trial"))
    for r in summary[:3]:  # the ε figures, whole, on the metric's own line
        assert eps_up(r["epsilon_spent"]) in eps_row
    assert "0.812" in text and "[0.77,0.84]" in text  # means and intervals, never split


def test_the_sweep_plan_fits(narrow) -> None:
    from dpgov.cli.sweep import _render_plan

    plan = {
        "dataset": "chest_xray_site_cohort",
        "n_train_patients": 1874,
        "blocks": ["site-a-2024q1", "site-b-2024q2"],
        "sample_rate": 0.0123,
        "steps": 480,
        "delta": 1e-5,
        "accountant": "pld",
        "trials": [
            {"trial": i, "epsilon": e, "seed": 1, "noise_multiplier": 1.23, "epsilon_run": e}
            for i, e in enumerate((1.0, 3.0, 8.0))
        ],
        "blocks_cost": [
            {
                "block": b,
                "charges": 3,
                "epsilon_spent": 2.0456,
                "epsilon_sweep": 8.4321,
                "epsilon_after": 9.1234,
                "epsilon_limit": 12.0,
                "remaining_after": 2.8766,
                "fits": True,
            }
            for b in ("site-a-2024q1", "site-b-2024q2")
        ],
        "epsilon_sweep": 8.4321,
        "epsilon_sum_of_trials": 12.0,
    }
    _render_plan(plan)
    lines = narrow()
    assert "…" not in "\n".join(lines)
    row = next(ln for ln in lines if ln.startswith("site-a-2024q1"))
    for figure in ("2.046", "8.433", "9.124", "2.876"):  # spent/sweep/after up, left down
        assert figure in row


IDS = ["3f2a9c10-aaaa", "3f2a9c10-bbbb", "3f7d0000-cccc", "9e01", "9e0112"]


def test_a_unique_prefix_resolves_to_its_id() -> None:
    assert resolve_prefix("3f7", IDS, what="reservation", option="ID") == "3f7d0000-cccc"
    assert resolve_prefix("3f2a9c10-b", IDS, what="reservation", option="ID") == "3f2a9c10-bbbb"
    # a whole id wins over the longer ids it starts
    assert resolve_prefix("9e01", IDS, what="reservation", option="ID") == "9e01"


def test_an_ambiguous_prefix_names_its_candidates() -> None:
    with pytest.raises(UsageError) as err:
        resolve_prefix("3f2a", IDS, what="reservation", option="RESERVATION")
    text = str(err.value)
    assert "\n" not in text and "is the start of 2 reservation ids" in text
    assert "3f2a9c10-aaaa" in text and "3f2a9c10-bbbb" in text
    many = [f"ab{i:02d}" for i in range(10)]
    with pytest.raises(UsageError) as err:
        resolve_prefix("ab", many, what="reservation", option="RESERVATION")
    assert f"and {10 - MAX_CANDIDATES} more" in str(err.value)
    assert "ab09" not in str(err.value)  # at most a few are named


def test_an_unknown_prefix_is_one_line() -> None:
    with pytest.raises(UsageError, match="unknown reservation 'ffff'"):
        resolve_prefix("ffff", IDS, what="reservation", option="RESERVATION")
    with pytest.raises(UsageError):
        resolve_prefix("", IDS, what="reservation", option="RESERVATION")


RID = "9c6ae688-9478-4573-a135-b0bcdbe08626"


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        (
            "reservation",
            {
                "reservation": RID,
                "dataset": "cxr",
                "blocks": ["a", "b"],
                "mechanism": {"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 500},
                "epsilon_run": 1.0821,
            },
            "9c6ae688 cxr/a, b σ=1.1 q=0.01 T=500 ε_run=1.083",
        ),
        ("commit", {"reservation": RID, "steps": 120}, "9c6ae688 steps=120"),
        ("abort", {"reservation": RID, "reason": "crashed"}, "9c6ae688 crashed"),
        (
            "gate_decision",
            {
                "model": "cxr-mlp",
                "version": "3",
                "allowed": False,
                "checks": [
                    {"name": "auroc", "passed": True},
                    {"name": "fnr_gap:sex", "passed": False},
                    {"name": "approvals", "passed": False},
                ],
                "purpose": "promotion to @production",
            },
            "cxr-mlp v3 BLOCKED by fnr_gap:sex, approvals (promotion to @production)",
        ),
        (
            "approval",
            {"model": "cxr-mlp", "version": "3", "by": "alice", "note": "reviewed", "run_id": "r"},
            "cxr-mlp v3 by alice: reviewed",
        ),
        (
            "promotion",
            {"model": "cxr-mlp", "version": "3", "alias": "production", "replaced": "2"},
            "cxr-mlp v3 @production (was v2)",
        ),
        (
            "policy_set",
            {"action": "set", "dataset": None, "policy": {"sha256": "ab" * 32}, "reason": "r"},
            "set ledger policy abababababab: r",
        ),
        # a kind without its own line: the usual keys, ids by their start
        (
            "facts_bound",
            {"model": "m", "version": "1", "reservation": RID, "digests": {"a": 1}},
            "model=m version=1 reservation=9c6ae688",
        ),
        ("pseudonym_key", {"fingerprint": "f1e2d3"}, "fingerprint=f1e2d3"),
        # an entry of an older shape falls back to the generic line instead of failing
        ("reservation", {"reservation": RID, "dataset": "cxr"}, "dataset=cxr reservation=9c6ae688"),
    ],
)
def test_ledger_show_summarises_each_entry_in_one_line(kind, payload, expected) -> None:
    from dpgov.cli.ledger import _summary

    assert _summary(kind, payload) == expected


def test_a_long_generic_summary_is_cut_at_its_width() -> None:
    from dpgov.cli.ledger import SUMMARY_WIDTH, _summary

    text = _summary("other", {"reason": "x" * 500})
    assert len(text) == SUMMARY_WIDTH and text.endswith("…") and "\n" not in text
