"""The gate's secret_noise check and the confined non-private reference (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gate_factories import APPROVED, facts, ledger_facts, policy

from dpgov.errors import Refused
from dpgov.gate.decision import evaluate
from dpgov.gate.noise import refuse_reproducible_noise
from dpgov.gate.reference import (
    REFERENCE_OFF,
    decision_used_reference,
    reference_used,
    widening_on,
)
from dpgov.policy import load_policy

REPO = Path(__file__).resolve().parents[3]
WIDENING = ("auroc_gap_widening", "fnr_gap_widening")


def decide(pol=None, f=None):
    return evaluate(pol or policy(), f or facts(), ledger_facts(), APPROVED, policy_sha256="a" * 64)


@pytest.mark.parametrize("source", ["os_entropy", "csprng"])
def test_secret_noise_passes_for_secret_sources(source: str) -> None:
    c = decide(f=facts(noise_source=source)).check("secret_noise")
    assert c.passed and c.observed == source


def test_noise_from_the_seed_is_refused_by_default() -> None:
    d = decide(f=facts(noise_source="seed"))
    c = d.check("secret_noise")
    assert not c.passed and not d.allowed
    assert "regenerate" in c.reason and "allow_reproducible_noise is false" in c.reason
    assert d.failing == (c,)


def test_noise_from_the_seed_passes_when_the_policy_allows_it() -> None:
    pol = policy(release={"allow_reproducible_noise": True})
    c = decide(pol, facts(noise_source="seed")).check("secret_noise")
    assert c.passed and "allowed by the policy" in c.reason


def test_facts_without_a_noise_source_count_as_seed_derived() -> None:
    c = decide(f=facts(noise_source=None)).check("secret_noise")
    assert not c.passed and c.observed == "seed" and "no noise source recorded" in c.reason


def test_an_unknown_noise_source_fails_even_when_reproducible_noise_is_allowed() -> None:
    pol = policy(release={"allow_reproducible_noise": True})
    assert not decide(pol, facts(noise_source="clock")).check("secret_noise").passed


def test_the_reference_has_no_secret_noise() -> None:
    assert not decide(f=facts(private=False)).check("secret_noise").passed


def test_widening_is_judged_against_the_reference_by_default() -> None:
    d = decide()
    lines = [c for c in d.checks if c.name.startswith(WIDENING)]
    assert lines and all(c.observed is not None for c in lines)
    assert decision_used_reference([c.to_dict() for c in d.checks])
    assert reference_used(policy(), facts())


def test_allow_reference_false_turns_widening_off_and_says_why() -> None:
    pol = policy(release={"allow_reference": False})
    # a widening over its limit against the reference would fail if judged
    d = decide(pol, facts(reference=None))
    lines = [c for c in d.checks if c.name.startswith(WIDENING)]
    assert len(lines) == 4
    assert all(c.passed and c.reason == REFERENCE_OFF and c.observed is None for c in lines)
    assert d.allowed, d.summary()
    assert not decision_used_reference([c.to_dict() for c in d.checks])
    assert not reference_used(pol, facts())
    # the same facts under the default policy fail: no reference recorded
    assert not decide(f=facts(reference=None)).allowed


def test_the_gap_checks_themselves_stay_on_without_a_reference() -> None:
    pol = policy(release={"allow_reference": False})
    gaps = [c for c in decide(pol).checks if c.name.startswith(("auroc_gap:", "fnr_gap:"))]
    assert gaps and all(c.observed is not None for c in gaps)


def test_strict_policy_forbids_the_reference_and_reproducible_noise() -> None:
    strict = load_policy(REPO / "policies" / "strict.yaml").policy
    assert strict.release.allow_reference is False
    assert strict.release.allow_reproducible_noise is False
    default = load_policy(REPO / "policies" / "default.yaml").policy
    assert default.release.allow_reference is True
    assert default.release.allow_reproducible_noise is False


def test_a_run_asking_for_reproducible_noise_is_refused_unless_allowed() -> None:
    with pytest.raises(Refused, match="allow_reproducible_noise: false"):
        refuse_reproducible_noise(policy(), reproducible=True, where="run")
    refuse_reproducible_noise(policy(), reproducible=False, where="run")
    allowed = policy(release={"allow_reproducible_noise": True})
    refuse_reproducible_noise(allowed, reproducible=True, where="run")


def test_the_reference_is_not_used_when_no_widening_limit_is_set() -> None:
    off = policy(fairness={"max_auroc_gap_widening": None, "max_fnr_gap_widening": None})
    assert not widening_on(off) and not reference_used(off, facts())
    assert widening_on(policy()) and not reference_used(policy(), facts(private=False))
    assert not decision_used_reference([c.to_dict() for c in decide(off).checks])
