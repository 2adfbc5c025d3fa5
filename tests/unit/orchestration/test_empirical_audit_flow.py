"""The empirical-audit flow's wiring: its audit task spends privacy and is never retried, and
its artifact shows both numbers, the ceiling and a violation as such."""

from __future__ import annotations

from pipelines.empirical_audit import audit_markdown, audit_model_task

RESULT = {
    "model": "m",
    "version": "3",
    "epsilon_lower_bound": 0.412,
    "epsilon_claimed": 0.993,
    "ceiling": 5.09,
    "canaries": 1000,
    "guesses": 500,
    "correct": 290,
    "delta": 1e-5,
    "confidence": 0.95,
    "threat_model": "white-box",
    "passed": True,
    "ledger_seq": 42,
}


def test_the_audit_task_is_never_retried() -> None:
    assert audit_model_task.retries == 0


def test_markdown_shows_both_numbers_and_the_ceiling() -> None:
    text = audit_markdown(RESULT)
    assert "0.412" in text and "0.993" in text and "5.090" in text and "passed" in text
    assert "white-box gradient canaries" in text and "| ledger entry | 42 |" in text
    bad = audit_markdown({**RESULT, "epsilon_lower_bound": 2.5, "passed": False})
    assert "VIOLATION" in bad and "2.500" in bad


def test_deployed_as_a_triggered_flow_by_module_path() -> None:
    from pipelines.deployments import EMPIRICAL_AUDIT, build

    made = {d.name: d for d in build(cron="0 3 * * *", audit_cron=None, params=None)}
    d = made[EMPIRICAL_AUDIT]
    assert d.entrypoint == "pipelines.empirical_audit.empirical_audit"
    assert not d.schedules  # triggered: `dpgov flows run empirical-audit/... -p model=...`
