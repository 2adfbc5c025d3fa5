"""The pure gate: every check shown passing and failing, one behaviour per test."""

from __future__ import annotations

import json

from gate_factories import (
    APPROVED,
    approval,
    block,
    facts,
    ledger_facts,
    policy,
    refusal,
    subgroup,
)

from dpgov.gate.decision import evaluate
from dpgov.gate.facts import Gap


def decide(pol=None, f=None, led=None, approvals=APPROVED):
    return evaluate(
        pol or policy(), f or facts(), led or ledger_facts(), approvals, policy_sha256="a" * 64
    )


def check(name, **kw):
    return decide(**kw).check(name)


# ------------------------------------------------------------------------------ the decision


def test_good_candidate_with_approval_is_allowed():
    d = decide()
    assert d.allowed, d.summary()
    assert d.failing == ()


def test_every_line_names_observed_limit_passed_and_reason():
    for c in decide().checks:
        assert c.name and c.reason
        assert isinstance(c.passed, bool)


def test_decision_lists_every_expected_check():
    names = [c.name for c in decide().checks]
    assert names == [
        "private_model",
        "release_epsilon",
        "release_delta",
        "delta_vs_patients",
        "secure_rng",
        "ledger_reservation",
        "ledger_chain",
        "block_budget:flchain/1995",
        "block_budget:flchain/1996",
        "composition:flchain/1995",
        "composition:flchain/1996",
        "secret_noise",
        "empirical_epsilon",
        "auroc",
        "calibration_error",
        "auroc_drop",
        "auroc_gap:sex",
        "auroc_gap_widening:sex",
        "fnr_gap:sex",
        "fnr_gap_widening:sex",
        "auroc_gap:age_band",
        "auroc_gap_widening:age_band",
        "fnr_gap:age_band",
        "fnr_gap_widening:age_band",
        "refusals",
        "approvals",
    ]


def test_decision_dict_is_json_and_names_failing_checks():
    d = decide(approvals=())
    data = json.loads(json.dumps(d.to_dict()))
    assert data["allowed"] is False
    assert data["failing"] == ["approvals"]
    assert data["policy_sha256"] == "a" * 64


def test_summary_lists_every_failing_check():
    d = decide(f=facts(auroc=0.4, calibration_error=0.5), approvals=())
    s = d.summary()
    assert "3 check(s)" in s
    assert "auroc:" in s and "calibration_error:" in s and "approvals:" in s


def test_evaluate_is_pure_and_deterministic():
    assert decide() == decide()


# ------------------------------------------------------------------------------ privacy


def test_non_private_reference_is_never_promotable():
    c = check("private_model", f=facts(private=False))
    assert not c.passed
    assert "never promotable" in c.reason


def test_release_epsilon_within_limit_passes():
    c = check("release_epsilon", pol=policy(release={"max_epsilon": 3.0}))
    assert c.passed and c.observed == 2.0 and c.limit == 3.0


def test_release_epsilon_over_limit_fails():
    c = check("release_epsilon", pol=policy(release={"max_epsilon": 1.0}))
    assert not c.passed
    assert "over the release limit 1" in c.reason


def test_release_epsilon_defaults_to_block_budget():
    assert check("release_epsilon").limit == 8.0


def test_release_epsilon_uses_larger_ledger_figure():
    c = check(
        "release_epsilon",
        pol=policy(release={"max_epsilon": 2.5}),
        led=ledger_facts(run_epsilon=2.6),
    )
    assert not c.passed
    assert c.observed == 2.6 and "(ledger)" in c.reason


def test_release_epsilon_missing_fails():
    c = check("release_epsilon", f=facts(epsilon=None), led=ledger_facts(run_epsilon=None))
    assert not c.passed


def test_release_delta_over_limit_fails():
    c = check("release_delta", pol=policy(release={"max_delta": 1e-6}))
    assert not c.passed and c.limit == 1e-6


def test_release_delta_within_limit_passes():
    assert check("release_delta").passed


def test_delta_below_inverse_patients_passes():
    c = check("delta_vs_patients")
    assert c.passed and c.limit == 1 / 2000


def test_delta_not_below_inverse_patients_fails():
    c = check("delta_vs_patients", f=facts(delta=1e-3, n_train_patients=1000))
    assert not c.passed
    assert ">= 1/1000" in c.reason


def test_delta_vs_patients_off_passes():
    c = check(
        "delta_vs_patients",
        pol=policy(release={"delta_below_inverse_patients": False}),
        f=facts(delta=1e-3, n_train_patients=1000),
    )
    assert c.passed and c.reason == "off in policy"


def test_secure_rng_required_and_missing_fails():
    c = check("secure_rng", pol=policy(release={"require_secure_rng": True}))
    assert not c.passed


def test_secure_rng_required_and_used_passes():
    c = check(
        "secure_rng", pol=policy(release={"require_secure_rng": True}), f=facts(secure_rng=True)
    )
    assert c.passed


def test_reservation_committed_passes():
    assert check("ledger_reservation").passed


def test_reservation_pending_fails():
    c = check("ledger_reservation", led=ledger_facts(reservation_state="pending"))
    assert not c.passed and "pending" in c.reason


def test_reservation_aborted_fails():
    c = check("ledger_reservation", led=ledger_facts(reservation_state="aborted"))
    assert not c.passed and "aborted" in c.reason


def test_reservation_released_fails():
    assert not check("ledger_reservation", led=ledger_facts(reservation_state="released")).passed


def test_reservation_not_in_ledger_fails():
    c = check(
        "ledger_reservation", led=ledger_facts(reservation_id=None, reservation_state="missing")
    )
    assert not c.passed and "not in the ledger" in c.reason


def test_model_without_reservation_fails():
    c = check("ledger_reservation", f=facts(reservation_id=None))
    assert not c.passed and "no ledger reservation" in c.reason


def test_reservation_charging_other_blocks_fails():
    c = check("ledger_reservation", led=ledger_facts(reservation_blocks=("1995",)))
    assert not c.passed and c.observed == "mismatch"


def test_reservation_charging_other_dataset_fails():
    c = check("ledger_reservation", led=ledger_facts(reservation_dataset="other"))
    assert not c.passed and "'other'" in c.reason


def test_broken_ledger_chain_fails():
    c = check("ledger_chain", led=ledger_facts(chain_ok=False, chain_reason="entry 3 edited"))
    assert not c.passed and "entry 3 edited" in c.reason


def test_block_within_budget_passes():
    c = check("block_budget:flchain/1995")
    assert c.passed and c.observed == 2.0 and c.limit == 8.0


def test_block_over_budget_fails():
    led = ledger_facts(blocks=(block("1995", spent=8.5), block("1996")))
    c = check("block_budget:flchain/1995", led=led)
    assert not c.passed and "over budget" in c.reason


def test_block_at_its_limit_up_to_round_off_passes():
    led = ledger_facts(blocks=(block("1995", spent=8.0 * (1 + 1e-12)), block("1996")))
    assert check("block_budget:flchain/1995", led=led).passed  # contracts.within, not <=


def test_block_reason_shows_spent_epsilon_rounded_up():
    led = ledger_facts(blocks=(block("1995", spent=7.12341), block("1996")))
    assert "ε spent 7.1235 of 8" in check("block_budget:flchain/1995", led=led).reason


def test_block_beyond_the_tolerance_fails():
    led = ledger_facts(blocks=(block("1995", spent=8.0 * (1 + 1e-6)), block("1996")))
    assert not check("block_budget:flchain/1995", led=led).passed


def test_block_missing_from_ledger_fails():
    c = check("block_budget:flchain/1996", led=ledger_facts(blocks=(block("1995"),)))
    assert not c.passed and "not in the ledger" in c.reason


def test_block_that_cannot_be_composed_fails():
    led = ledger_facts(blocks=(block("1995", note="cannot compose"), block("1996")))
    assert not check("block_budget:flchain/1995", led=led).passed


def test_model_naming_no_blocks_fails():
    assert not check("block_budget", f=facts(blocks=[])).passed


# ------------------------------------------------------------------------------ utility


def test_auroc_above_floor_passes():
    assert check("auroc").passed


def test_auroc_below_floor_fails():
    c = check("auroc", f=facts(auroc=0.55))
    assert not c.passed and "below the floor 0.6" in c.reason


def test_auroc_interval_judges_lower_bound():
    c = check("auroc", pol=policy(utility={"min_auroc": 0.78, "judge_on": "interval"}))
    assert not c.passed and c.observed == 0.75


def test_auroc_interval_missing_fails():
    c = check("auroc", pol=policy(utility={"judge_on": "interval"}), f=facts(auroc_lo=None))
    assert not c.passed and "no bootstrap interval" in c.reason


def test_auroc_floor_off_passes():
    assert check("auroc", pol=policy(utility={"min_auroc": None}), f=facts(auroc=0.3)).passed


def test_calibration_within_limit_passes():
    assert check("calibration_error").passed


def test_calibration_over_limit_fails():
    c = check("calibration_error", f=facts(calibration_error=0.2))
    assert not c.passed and c.limit == 0.1


def test_calibration_off_passes():
    c = check(
        "calibration_error",
        pol=policy(utility={"max_calibration_error": None}),
        f=facts(calibration_error=0.9),
    )
    assert c.passed


# ------------------------------------------------------------------------------ fairness


def test_auroc_gap_within_limit_passes():
    c = check("auroc_gap:sex")
    assert c.passed and c.observed == 0.02


def test_auroc_gap_over_limit_fails():
    c = check("auroc_gap:sex", pol=policy(fairness={"max_auroc_gap": 0.01}))
    assert not c.passed


def test_fnr_gap_over_limit_fails():
    c = check("fnr_gap:age_band", pol=policy(fairness={"max_fnr_gap": 0.05}))
    assert not c.passed and "FNR gap 0.1000" in c.reason


def test_fnr_gap_within_limit_passes():
    assert check("fnr_gap:age_band").passed


def test_interval_judges_upper_bound_of_gap():
    c = check(
        "fnr_gap:age_band", pol=policy(fairness={"judge_on": "interval", "max_fnr_gap": 0.15})
    )
    assert not c.passed and c.observed == 0.18


def test_interval_without_bounds_fails():
    gaps = [g.model_copy(update={"lo": None, "hi": None}) for g in facts().gaps]
    subs = [s.model_copy(update={"auroc_lo": None, "auroc_hi": None}) for s in facts().subgroups]
    c = check(
        "auroc_gap:sex",
        pol=policy(fairness={"judge_on": "interval"}),
        f=facts(gaps=gaps, subgroups=subs),
    )
    assert not c.passed and "no bootstrap interval" in c.reason


def test_gap_recomputed_when_recorded_one_used_other_group_size():
    c = check("auroc_gap:age_band", pol=policy(fairness={"min_group_size": 240}))
    # 70+ (230 patients) drops out: 0.80 - 0.78
    assert c.passed and abs(c.observed - 0.02) < 1e-12
    assert "recomputed" in c.reason


def test_recomputed_interval_is_conservative():
    c = check(
        "auroc_gap:age_band", pol=policy(fairness={"min_group_size": 240, "judge_on": "interval"})
    )
    assert abs(c.observed - (0.84 - 0.74)) < 1e-12


def test_groups_with_few_positives_are_not_judged():
    c = check("fnr_gap:age_band", pol=policy(fairness={"min_group_positives": 25}))
    # 50-59 (20 positives) drops out: 0.35 - 0.30
    assert abs(c.observed - 0.05) < 1e-12


def test_unjudgeable_attribute_fails_when_required():
    c = check("auroc_gap:sex", pol=policy(fairness={"min_group_size": 390}))
    assert not c.passed and "not judged" in c.reason


def test_unjudgeable_attribute_passes_when_not_required():
    c = check(
        "auroc_gap:sex", pol=policy(fairness={"min_group_size": 390, "require_judgeable": False})
    )
    assert c.passed and "not judged" in c.reason


def test_attribute_without_subgroup_metrics_fails():
    c = check("auroc_gap:race", pol=policy(fairness={"sensitive_attributes": ["sex", "race"]}))
    assert not c.passed and "no subgroup metrics recorded for 'race'" in c.reason


def test_group_with_one_class_is_left_out_of_auroc_gap():
    subs = [*facts().subgroups, subgroup("sex", "X", 100, 0, None, None)]
    assert check("auroc_gap:sex", f=facts(subgroups=subs)).observed == 0.02


def test_gap_limit_off_passes():
    c = check(
        "fnr_gap:sex",
        pol=policy(fairness={"max_fnr_gap": None}),
        f=facts(gaps=[g.model_copy(update={"gap": 0.9}) for g in facts().gaps]),
    )
    assert c.passed and c.reason == "off in policy"


def test_widening_within_limit_passes():
    c = check("fnr_gap_widening:age_band")
    assert c.passed and abs(c.observed - 0.02) < 1e-12


def test_widening_over_limit_fails():
    c = check("fnr_gap_widening:age_band", pol=policy(fairness={"max_fnr_gap_widening": 0.01}))
    assert not c.passed and "widened by +0.0200" in c.reason


def test_widening_without_reference_fails():
    c = check("auroc_gap_widening:sex", f=facts(reference=None))
    assert not c.passed and "no non-private reference" in c.reason


def test_widening_off_needs_no_reference():
    pol = policy(fairness={"max_auroc_gap_widening": None, "max_fnr_gap_widening": None})
    assert decide(pol=pol, f=facts(reference=None)).allowed


def test_widening_without_reference_gap_for_attribute_fails():
    ref = facts().reference.model_copy(
        update={
            "gaps": [Gap(attribute="sex", metric="auroc", gap=0.0, groups_judged=2, min_group_n=30)]
        }
    )
    c = check("fnr_gap_widening:sex", f=facts(reference=ref))
    assert not c.passed and "recorded no FNR gap" in c.reason


# ------------------------------------------------------------------------------ approvals


def test_missing_approval_fails():
    c = check("approvals", approvals=())
    assert not c.passed and c.observed == 0 and c.limit == 1


def test_enough_approvals_pass():
    c = check("approvals")
    assert c.passed and "alice" in c.reason


def test_same_approver_twice_counts_once():
    pol = policy(approvals={"required": 2})
    c = check("approvals", pol=pol, approvals=(approval("alice", 1), approval("alice", 2)))
    assert not c.passed and c.observed == 1


def test_one_identity_under_two_names_counts_once():
    """Approvals are keyed by the authenticated identity, not the typed name."""
    pol = policy(approvals={"required": 2, "identities": {"carol": "alice"}})
    two = (approval("alice", 1), approval("carol", 2, identity="alice"))
    c = check("approvals", pol=pol, approvals=two)
    assert not c.passed and c.observed == 1


def test_two_distinct_approvers_meet_two_required():
    pol = policy(approvals={"required": 2})
    assert check(
        "approvals", pol=pol, approvals=(approval("alice", 1), approval("carol", 2))
    ).passed


def test_author_approval_not_counted_unless_allowed():
    c = check("approvals", approvals=(approval("bob", 1),))
    assert not c.passed and "author of the run" in c.reason


def test_author_approval_counted_when_allowed():
    pol = policy(approvals={"allow_author": True})
    assert check("approvals", pol=pol, approvals=(approval("bob", 1),)).passed


def test_approval_by_someone_not_listed_is_not_counted():
    pol = policy(approvals={"approvers": ["carol"]})
    c = check("approvals", pol=pol)
    assert not c.passed and "not an approver" in c.reason


def test_no_approvals_required_passes():
    assert check("approvals", pol=policy(approvals={"required": 0}), approvals=()).passed


def test_refusal_blocks():
    d = decide(approvals=(approval("alice", 1), refusal("carol", 2, "subgroup too small")))
    assert not d.check("refusals").passed
    assert "carol (subgroup too small)" in d.check("refusals").reason
    assert d.check("approvals").passed  # alice's approval still counts, the refusal blocks


def test_refusal_lifted_when_same_approver_approves_later():
    d = decide(approvals=(refusal("carol", 1), approval("carol", 2)))
    assert d.check("refusals").passed
    assert d.allowed


def test_refusal_not_lifted_by_another_approver():
    d = decide(approvals=(refusal("carol", 1), approval("alice", 2)))
    assert not d.check("refusals").passed


def test_approval_withdrawn_by_later_refusal_of_same_approver():
    d = decide(approvals=(approval("alice", 1), refusal("alice", 2)))
    assert not d.check("approvals").passed and not d.check("refusals").passed


def test_refusal_by_someone_no_longer_listed_does_not_block():
    pol = policy(approvals={"approvers": ["alice"]})
    d = decide(pol=pol, approvals=(approval("alice", 1), refusal("mallory", 2)))
    assert d.check("refusals").passed
