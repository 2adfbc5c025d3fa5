"""The gate's ``empirical_epsilon`` check (dpgov.gate.empirical): off with the reason, required
by policy, passed, and failed by a recorded lower bound above the claimed ε."""

from __future__ import annotations

from gate_factories import APPROVED, facts, ledger_facts, policy

from dpgov.gate.decision import Check
from dpgov.gate.decision import evaluate as decide
from dpgov.gate.empirical import CHECK_NAME, EmpiricalAudit


def _audit(lower: float, claimed: float = 1.0) -> EmpiricalAudit:
    return EmpiricalAudit.from_payload(
        {
            "model": "m",
            "version": "1",
            "epsilon_lower_bound": lower,
            "epsilon_claimed": claimed,
            "ceiling": 5.09,
            "canaries": 1000,
            "guesses": 500,
            "correct": 300,
            "delta": 1e-5,
            "confidence": 0.95,
            "threat_model": "white-box",
        },
        seq=7,
    )


def _check(pol: object, audit: EmpiricalAudit | None) -> Check:
    d = decide(
        pol,  # type: ignore[arg-type]
        facts(),
        ledger_facts(),
        APPROVED,
        policy_sha256="a" * 64,
        empirical=audit,
    )
    return d.check(CHECK_NAME)


def test_off_with_the_reason_when_not_required_and_none_recorded() -> None:
    c = _check(policy(), None)
    assert c.passed and c.observed is None
    assert c.reason.startswith("off") and "require_empirical_audit: false" in c.reason


def test_required_and_missing_fails() -> None:
    c = _check(policy(release={"require_empirical_audit": True}), None)
    assert not c.passed and "dpgov audit-model" in c.reason


def test_a_bound_within_the_claim_passes_and_shows_both_numbers() -> None:
    for pol in (policy(), policy(release={"require_empirical_audit": True})):
        c = _check(pol, _audit(0.4, 1.0))
        assert c.passed and c.observed == 0.4 and c.limit == 1.0
        assert "0.400" in c.reason and "1.000" in c.reason and "ceiling 5.090" in c.reason


def test_a_bound_above_the_claim_fails_whatever_the_policy() -> None:
    for pol in (policy(), policy(release={"require_empirical_audit": True})):
        c = _check(pol, _audit(1.2, 1.0))
        assert not c.passed and "violated" in c.reason
    d = decide(policy(), facts(), ledger_facts(), APPROVED, empirical=_audit(1.2, 1.0))
    assert not d.allowed
    # within the accountants' tolerance is not a violation (dpgov.contracts.within)
    assert _check(policy(), _audit(1.0 + 1e-12, 1.0)).passed
