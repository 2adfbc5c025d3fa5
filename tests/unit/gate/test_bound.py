"""The facts_bound and recall checks (dpgov.gate.bound), pure over a binding and the digests."""

from __future__ import annotations

from gate_factories import facts

from dpgov.gate.bound import Bound, binding_check, recall_check
from dpgov.gate.ports import ModelVersionInfo
from dpgov.ledger.releases import Binding, Recall

DIGESTS = {"candidate_facts": "a" * 64, "privacy_statement": "b" * 64, "weights": "c" * 64}
BINDING = Binding(7, "flchain-mlp", "1", "run-1", "res-1", True, "bob", dict(DIGESTS))
INFO = ModelVersionInfo("flchain-mlp", "1", "run-1")


def bound(binding=BINDING, **digests):
    return Bound(binding, None, {**DIGESTS, **digests}, None)


def test_matching_digests_pass():
    c = binding_check(bound(), facts(), INFO)
    assert c.passed and c.observed == 7


def test_each_changed_file_is_named():
    c = binding_check(bound(weights="d" * 64, candidate_facts="e" * 64), facts(), INFO)
    assert not c.passed
    assert "candidate facts changed" in c.reason and "model weights changed" in c.reason
    assert "privacy statement" not in c.reason


def test_another_reservation_or_run_fails():
    c = binding_check(bound(), facts(reservation_id="res-2"), INFO)
    assert not c.passed and "claims reservation res-2, the ledger bound res-1" in c.reason
    c = binding_check(bound(), facts(run_id="run-2"), ModelVersionInfo("flchain-mlp", "1", "run-2"))
    assert not c.passed and "the ledger bound run run-1" in c.reason


def test_forged_private_facts_of_the_reference_fail():
    reference = Binding(7, "flchain-mlp", "1", "run-1", None, False, "bob", dict(DIGESTS))
    c = binding_check(bound(reference), facts(reservation_id=None), INFO)
    assert not c.passed and "reserved no budget (the non-private reference)" in c.reason


def test_no_binding_fails():
    c = binding_check(Bound(None, None, DIGESTS, None), facts(), INFO)
    assert not c.passed and "no facts_bound entry" in c.reason


def test_a_recalled_version_fails_the_recall_check():
    assert recall_check(bound()).passed
    r = Recall(9, "flchain-mlp", "1", "champion", None, "audit finding", "dpo")
    c = recall_check(Bound(BINDING, r, DIGESTS, None))
    assert not c.passed and "recalled by dpo at entry 9: audit finding" in c.reason
