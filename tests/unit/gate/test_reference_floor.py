"""utility.max_auroc_drop: the AUROC floor relative to the non-private reference."""

from __future__ import annotations

from gate_factories import APPROVED, facts, ledger_facts, policy

from dpgov.gate.decision import Check
from dpgov.gate.decision import evaluate as decide


def _check(pol: object, f: object) -> Check:
    d = decide(pol, f, ledger_facts(), APPROVED, policy_sha256="a" * 64)  # type: ignore[arg-type]
    return d.check("auroc_drop")


def test_off_by_default_and_judged_when_set() -> None:
    assert _check(policy(), facts()).reason == "off in policy"
    # the factories' candidate: AUROC 0.80, reference 0.85: a drop of 0.05
    c = _check(policy(utility={"max_auroc_drop": 0.1}), facts())
    assert c.passed and abs(c.observed - 0.05) < 1e-12 and c.limit == 0.1
    c = _check(policy(utility={"max_auroc_drop": 0.04}), facts())
    assert not c.passed and "over 0.04" in c.reason
    # the dry run: 0.62 passes a 0.6 floor but is 0.21 below the reference
    c = _check(policy(utility={"max_auroc_drop": 0.1}), facts(auroc=0.62))
    assert not c.passed and c.observed > 0.2


def test_shown_off_with_the_reason_without_a_reference() -> None:
    strict = {"max_auroc_drop": 0.04}
    c = _check(policy(utility=strict, release={"allow_reference": False}), facts())
    assert c.passed and c.observed is None and "release.allow_reference: false" in c.reason
    c = _check(policy(utility=strict), facts(reference=None))
    assert c.passed and c.observed is None and "no non-private reference was trained" in c.reason
