"""The gate on DP-evaluated releases (issue 17): every dp_interval check judged on its bound.

Releases are drawn with the mechanism's own ``release`` on a generated test split (seeded
noise, then marked as OS entropy so the release line passes); the figures each check must
judge are recomputed independently with ``dp_metrics`` at the η per bound the rule gives.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from gate_factories import APPROVED, facts, ledger_facts, policy
from hypothesis import given
from hypothesis import strategies as st

from dpgov.gate import dp_checks
from dpgov.gate.decision import evaluate
from dpgov.gate.dp_checks import EvalBlockFacts, EvaluationLedgerFacts, judged_bounds
from dpgov.gate.dp_metrics import dp_metrics, eta_per_check, gap_key
from dpgov.gate.facts import CandidateFacts
from dpgov.training.dp_evaluation import release

N = 6000
TEST_BLOCK = "test-1995"
PRIVATE = {
    "evaluation": {"private": True, "epsilon": 2.0},
    "utility": {"judge_on": "dp_interval"},
    "fairness": {"judge_on": "dp_interval"},
}


def _split(seed: int = 7, n: int = N):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], size=n)
    age = rng.choice(["50-59", "60-69", "70+"], size=n, p=[0.4, 0.35, 0.25])
    y = (rng.random(n) < 0.2).astype(int)
    noise = rng.normal(0, 1, size=n)
    logit_c = 1.6 * y - 1.2 + noise + np.where(sex == "F", -0.3, 0.0)
    logit_r = 2.0 * y - 1.2 + noise
    scores = {
        "candidate": 1 / (1 + np.exp(-logit_c)),
        "reference": 1 / (1 + np.exp(-logit_r)),
    }
    sensitive = pd.DataFrame({"sex": sex, "age_band": age})
    return y, scores, sensitive


@pytest.fixture(scope="module")
def pe():
    y, scores, sensitive = _split()
    drawn = release(
        y,
        scores,
        sensitive,
        threshold=0.3,
        epsilon=2.0,
        delta=1e-5,
        bins=20,
        attempt=1,
        test_blocks=[TEST_BLOCK],
        reservation_id="eval-1",
        generator=np.random.default_rng(11),
    )
    return drawn.model_copy(update={"noise_source": "os_entropy"})


def _led_eval(pe, **overrides):
    data = {
        "reservation_id": "eval-1",
        "reservation_state": "committed",
        "reservation_dataset": "flchain",
        "reservation_blocks": (TEST_BLOCK,),
        "release_epsilon": pe.epsilon,
        "noise_multiplier": pe.noise_multiplier,
        "blocks": (EvalBlockFacts("flchain", TEST_BLOCK, pe.epsilon, 1e-5, 1, False, "test"),),
    }
    data.update(overrides)
    return EvaluationLedgerFacts(**data)


def _private(**sections):
    merged = {k: dict(v) for k, v in PRIVATE.items()}
    for name, values in sections.items():
        merged[name] = {**merged.get(name, {}), **values}
    return policy(**merged)


def decide(pe, pol=None, f=None, led_eval=None):
    pol = pol or _private()
    f = f or facts(private_evaluation=pe)
    led = ledger_facts(evaluation=led_eval if led_eval is not None else _led_eval(pe))
    return evaluate(pol, f, led, APPROVED, policy_sha256="a" * 64)


def expected(pe, pol, model="candidate"):
    """The metrics the gate must judge, recomputed here at the rule's η per bound."""
    k = len(judged_bounds(pol, pe.models))
    eta = pol.evaluation.eta * 6 / (math.pi**2 * pe.attempt**2) / k
    return dp_metrics(
        pe,
        model=model,
        eta_check=eta,
        min_group_n=pol.fairness.min_group_size,
        min_group_positives=pol.fairness.min_group_positives,
    )


# ---------------------------------------------------------------------------- η and bounds


def test_bounds_counted_from_the_policy_and_layout():
    pol = _private()
    # candidate AUROC lo, ECE hi; per attribute and metric the candidate gap hi and the
    # reference gap lo (widening on by default); the drop is off by default
    assert len(judged_bounds(pol, ["candidate", "reference"])) == 2 + 2 * 2 * 2
    assert len(judged_bounds(pol, ["candidate"])) == 2 + 2 * 2
    drop = _private(utility={"max_auroc_drop": 0.1})
    names = judged_bounds(drop, ["candidate", "reference"])
    assert names.count("candidate.auroc.lo") == 1  # the floor and the drop share it
    assert "reference.auroc.hi" in names
    no_ref = _private(release={"allow_reference": False})
    assert len(judged_bounds(no_ref, ["candidate", "reference"])) == 2 + 2 * 2


@given(
    eta=st.floats(min_value=1e-6, max_value=0.5),
    bounds=st.integers(min_value=1, max_value=60),
    attempts=st.integers(min_value=1, max_value=400),
)
def test_total_failure_probability_over_all_attempts_is_at_most_eta(eta, bounds, attempts):
    total = sum(bounds * eta_per_check(eta, bounds, k) for k in range(1, attempts + 1))
    assert total <= eta * (1 + 1e-12)
    # and the shares approach η (no waste beyond the tail)
    assert total >= eta * (1 - 1.0 / attempts)


def test_decision_carries_eta_per_bound_and_attempt(pe):
    pol = _private()
    d = decide(pe, pol)
    k = len(judged_bounds(pol, pe.models))
    ev = d.to_dict()["evaluation"]
    assert ev["attempt"] == 1 and ev["bounds"] == k
    assert ev["eta_check"] == pytest.approx(0.05 * 6 / math.pi**2 / k)
    assert d.check("auroc").eta_check == pytest.approx(ev["eta_check"])


def test_a_later_attempt_judges_at_a_smaller_eta(pe):
    first = decide(pe).check("auroc")
    third_pe = pe.model_copy(update={"attempt": 3})
    third = decide(third_pe, f=facts(private_evaluation=third_pe)).check("auroc")
    assert third.eta_check == pytest.approx(first.eta_check / 9)
    assert third.observed < first.observed  # a wider interval: a lower lower bound


# ------------------------------------------------------------------------------- utility


def test_auroc_floor_is_judged_on_the_lower_bound_not_the_estimate(pe):
    m = expected(pe, _private())
    assert m.auroc_lo < m.auroc
    floor = round((m.auroc_lo + m.auroc) / 2, 6)  # the estimate meets it, the bound does not
    c = decide(pe, _private(utility={"min_auroc": floor})).check("auroc")
    assert not c.passed
    assert c.observed == pytest.approx(m.auroc_lo)
    assert c.noise_scale == pytest.approx(m.noise_scale["auroc"])
    low = decide(pe, _private(utility={"min_auroc": round(m.auroc_lo - 0.01, 6)})).check("auroc")
    assert low.passed


def test_calibration_ceiling_is_judged_on_the_upper_bound(pe):
    m = expected(pe, _private())
    limit = round((m.calibration_error + m.calibration_error_hi) / 2, 6)
    c = decide(pe, _private(utility={"max_calibration_error": limit})).check("calibration_error")
    assert not c.passed and c.observed == pytest.approx(m.calibration_error_hi)
    above = round(min(1.0, m.calibration_error_hi + 0.01), 6)
    ok = decide(pe, _private(utility={"max_calibration_error": above})).check("calibration_error")
    assert ok.passed


def test_auroc_drop_is_reference_upper_minus_candidate_lower(pe):
    pol = _private(utility={"max_auroc_drop": 0.5})
    c_m, r_m = expected(pe, pol), expected(pe, pol, "reference")
    c = decide(pe, pol).check("auroc_drop")
    assert c.observed == pytest.approx(r_m.auroc_hi - c_m.auroc_lo)
    assert c.observed > r_m.auroc - c_m.auroc  # more than the point drop
    point = r_m.auroc - c_m.auroc
    tight = _private(utility={"max_auroc_drop": round(point + 1e-4, 6)})
    assert not decide(pe, tight).check("auroc_drop").passed  # the point drop would pass


# ------------------------------------------------------------------------------- fairness


def test_gap_limit_is_judged_on_the_gap_upper_bound(pe):
    pol = _private()
    gap = next(g for g in expected(pe, pol).gaps if (g.attribute, g.metric) == ("sex", "fnr"))
    assert gap.groups_judged == 2 and gap.hi > gap.gap
    limit = round((gap.gap + gap.hi) / 2, 6)
    c = decide(pe, _private(fairness={"max_fnr_gap": limit})).check("fnr_gap:sex")
    assert not c.passed and c.observed == pytest.approx(gap.hi)
    ok = decide(pe, _private(fairness={"max_fnr_gap": min(1.0, round(gap.hi + 0.01, 6))}))
    assert ok.check("fnr_gap:sex").passed
    assert c.noise_scale == pytest.approx(expected(pe, pol).noise_scale[gap_key("sex", "fnr")])


def test_widening_is_candidate_upper_minus_reference_lower(pe):
    pol = _private(fairness={"max_auroc_gap_widening": 1.0})
    cand = next(g for g in expected(pe, pol).gaps if (g.attribute, g.metric) == ("sex", "auroc"))
    ref = next(
        g
        for g in expected(pe, pol, "reference").gaps
        if (g.attribute, g.metric) == ("sex", "auroc")
    )
    c = decide(pe, pol).check("auroc_gap_widening:sex")
    assert c.passed and c.observed == pytest.approx(cand.hi - ref.lo)
    point = cand.gap - ref.gap
    tight = _private(fairness={"max_auroc_gap_widening": round(max(0.0, point) + 1e-4, 6)})
    assert not decide(pe, tight).check("auroc_gap_widening:sex").passed


def test_widening_off_without_reference_in_policy(pe):
    pol = _private(release={"allow_reference": False})
    c = decide(pe, pol).check("fnr_gap_widening:age_band")
    assert c.passed and c.reason.startswith("off")


def test_unjudgeable_gap_follows_require_judgeable():
    y, scores, sensitive = _split(n=800)
    small = release(
        y,
        scores,
        sensitive,
        threshold=0.3,
        epsilon=2.0,
        delta=1e-5,
        bins=20,
        attempt=1,
        test_blocks=[TEST_BLOCK],
        reservation_id="eval-1",
        generator=np.random.default_rng(3),
    ).model_copy(update={"noise_source": "os_entropy"})
    big = {"min_group_size": 500, "min_group_positives": 10}
    blocked = decide(small, _private(fairness=big)).check("auroc_gap:age_band")
    assert not blocked.passed and "not judged" in blocked.reason
    assert "requires a judgeable gap" in blocked.reason
    lenient = _private(fairness={**big, "require_judgeable": False})
    assert decide(small, lenient).check("auroc_gap:age_band").passed


# --------------------------------------------------------------------- the release itself


def test_release_line_passes_and_states_epsilon_attempt_blocks(pe):
    c = decide(pe).check("dp_evaluation")
    assert c.passed, c.reason
    assert "attempt 1" in c.reason and TEST_BLOCK in c.reason
    assert c.limit == 2.0


def test_private_policy_without_release_fails_every_dp_check():
    d = evaluate(_private(), facts(), ledger_facts(), APPROVED)
    assert "no DP-evaluated release" in d.check("dp_evaluation").reason
    for name in ("dp_evaluation", "auroc", "calibration_error", "auroc_gap:sex"):
        assert not d.check(name).passed, name
    assert d.to_dict()["evaluation"]["recorded"] is False


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"reservation_id": None, "reservation_state": "missing"}, "not in the ledger"),
        ({"reservation_state": "pending"}, "pending"),
        ({"reservation_blocks": ("test-1996",)}, "is on blocks"),
        ({"noise_multiplier": 0.5}, "noise multiplier"),
        ({"release_epsilon": 9.0}, "over evaluation.epsilon"),
    ],
)
def test_release_line_fails_on_what_the_ledger_says(pe, overrides, words):
    c = decide(pe, led_eval=_led_eval(pe, **overrides)).check("dp_evaluation")
    assert not c.passed and words in c.reason


def test_release_with_reproducible_noise_fails(pe):
    seeded = pe.model_copy(update={"noise_source": "seed"})
    c = decide(seeded, f=facts(private_evaluation=seeded)).check("dp_evaluation")
    assert not c.passed and "regenerate" in c.reason


def test_release_missing_an_attribute_is_not_judged(pe):
    pol = _private(fairness={"sensitive_attributes": ["sex", "age_band", "race"]})
    d = decide(pe, pol)
    assert not d.check("dp_evaluation").passed
    assert "race" in d.check("dp_evaluation").reason
    assert not d.check("auroc").passed


# ------------------------------------------------------------------------------ test data


def test_test_budget_open_block_passes(pe):
    c = decide(pe).check(f"test_budget:flchain/{TEST_BLOCK}")
    assert c.passed and "open for another release" in c.reason
    assert decide(pe).evaluation.fresh_test_data_needed is False


def test_spent_test_block_says_fresh_test_data_is_needed(pe):
    retired = (EvalBlockFacts("flchain", TEST_BLOCK, 1.9, 1e-5, 3, True, "test"),)
    d = decide(pe, led_eval=_led_eval(pe, blocks=retired))
    c = d.check(f"test_budget:flchain/{TEST_BLOCK}")
    assert c.passed  # this release is charged and within its cap
    assert "fresh test data is needed" in c.reason
    assert d.to_dict()["evaluation"]["fresh_test_data_needed"] is True


def test_test_block_over_its_cap_fails(pe):
    pol = _private(evaluation={"epsilon_per_block": 3.0})
    over = (EvalBlockFacts("flchain", TEST_BLOCK, 3.5, 1e-5, 2, False, "test"),)
    c = decide(pe, pol, led_eval=_led_eval(pe, blocks=over)).check(
        f"test_budget:flchain/{TEST_BLOCK}"
    )
    assert not c.passed and c.limit == 3.0 and "over budget" in c.reason


def test_release_charged_to_a_training_block_fails(pe):
    train = (EvalBlockFacts("flchain", TEST_BLOCK, 0.5, 1e-5, 1, False, "train"),)
    c = decide(pe, led_eval=_led_eval(pe, blocks=train)).check(f"test_budget:flchain/{TEST_BLOCK}")
    assert not c.passed and "test blocks only" in c.reason


def test_missing_test_block_fails(pe):
    c = decide(pe, led_eval=_led_eval(pe, blocks=())).check(f"test_budget:flchain/{TEST_BLOCK}")
    assert not c.passed and "not in the ledger" in c.reason


# ------------------------------------------------------------------ the same figures again


def test_recorded_release_gives_identical_figures_every_time(pe):
    """gate, promote and preview recompute from the record: the facts read back from JSON
    (as the registry hands them) give the same decision, figure for figure."""
    first = decide(pe).to_dict()
    f = CandidateFacts.model_validate_json(facts(private_evaluation=pe).model_dump_json())
    again = decide(f.private_evaluation, f=f).to_dict()
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)


def test_every_dp_line_carries_its_noise_scale(pe):
    d = decide(pe, _private(utility={"max_auroc_drop": 0.5}))
    for name in ("auroc", "calibration_error", "auroc_drop", "auroc_gap:sex", "fnr_gap:age_band"):
        c = d.check(name)
        assert c.noise_scale is not None and c.noise_scale > 0, name
        assert c.to_dict()["noise_scale"] == c.noise_scale


def test_exact_metric_path_has_no_dp_lines(pe):
    d = evaluate(policy(), facts(private_evaluation=pe), ledger_facts(), APPROVED)
    names = [c.name for c in d.checks]
    assert "dp_evaluation" not in names and not any(n.startswith("test_budget") for n in names)
    assert d.evaluation is None and d.to_dict()["evaluation"] is None
    assert d.check("auroc").observed == 0.80  # the facts' figure, not the release's
    assert all(c.noise_scale is None for c in d.checks)


def test_dp_lines_module_names_the_models_like_the_run_side():
    from dpgov.training import private_eval

    assert (dp_checks.CANDIDATE, dp_checks.REFERENCE) == (
        private_eval.CANDIDATE,
        private_eval.REFERENCE,
    )


# ------------------------------------------------------------------- what people read


def test_markdown_shows_the_noise_column_and_the_eta(pe):
    from dpgov.gate.markdown import decision_markdown

    text = decision_markdown(decide(pe).to_dict())
    assert "| check | observed | limit | noise | result | reason |" in text
    assert "DP-evaluated release: attempt 1" in text and TEST_BLOCK in text
    auroc = next(line for line in text.splitlines() if line.startswith("| `auroc` |"))
    assert "±" in auroc
    exact = decision_markdown(evaluate(policy(), facts(), ledger_facts(), APPROVED).to_dict())
    assert "| noise |" not in exact and "DP-evaluated" not in exact


def test_gate_table_has_a_noise_column_at_80_columns(pe, monkeypatch):
    from rich.console import Console

    from dpgov.cli import gate as cli_gate

    console = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(cli_gate, "console", lambda: console)
    cli_gate.render_decision(decide(pe), "p.yaml")
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    header = next(line for line in text.splitlines() if " check " in line)
    assert "noise" in header
    assert "±" in next(line for line in text.splitlines() if " auroc " in line)
    assert "η=" in text  # the caption names η per bound


def test_next_hint_says_fresh_test_data_when_the_test_blocks_are_spent(pe):
    from dpgov.gate.next_steps import next_hint

    retired = (EvalBlockFacts("flchain", TEST_BLOCK, 1.9, 1e-5, 3, True, "test"),)
    strict = _private(utility={"min_auroc": 0.99})
    d = decide(pe, strict, led_eval=_led_eval(pe, blocks=retired)).to_dict()
    hint = next_hint(d)
    assert hint is not None and "Fresh test data is needed" in hint and TEST_BLOCK in hint
    open_blocks = next_hint(decide(pe, strict).to_dict())
    assert open_blocks is not None and "Fresh test data" not in open_blocks
    assert "Retrain" in open_blocks and "attempt 2 or later: charged again" in open_blocks


def test_widening_over_subgroups_the_reference_judged_otherwise(pe):
    """The two models' noisy counts are independent: when the reference's judged other
    subgroups, its gap's lower bound is taken over the candidate's subgroups, from subgroup
    bounds at eta_check / (2k) each (never "cannot compare" for one release)."""
    shrunk = [
        h.model_copy(update={"counts": [c * 0.2 for c in h.counts]})
        if (h.model, h.attribute, h.group) == ("reference", "age_band", "70+")
        else h
        for h in pe.histograms
    ]
    odd = pe.model_copy(update={"histograms": shrunk})
    pol = _private(fairness={"max_fnr_gap_widening": 1.0, "min_group_size": 400})
    cand = next(
        g for g in expected(odd, pol).gaps if (g.attribute, g.metric) == ("age_band", "fnr")
    )
    ref = next(
        g
        for g in expected(odd, pol, "reference").gaps
        if (g.attribute, g.metric) == ("age_band", "fnr")
    )
    assert sorted(ref.groups) != sorted(cand.groups) and len(cand.groups) == 3
    k = len(judged_bounds(pol, odd.models))
    eta = 0.05 * 6 / math.pi**2 / k
    rows = {
        g.group: g
        for g in dp_metrics(
            odd, model="reference", eta_check=eta / 6, min_group_n=0, min_group_positives=0
        ).subgroups
        if g.attribute == "age_band"
    }
    lo = max(
        0.0, max(rows[g].fnr_lo for g in cand.groups) - min(rows[g].fnr_hi for g in cand.groups)
    )
    c = decide(odd, pol, f=facts(private_evaluation=odd)).check("fnr_gap_widening:age_band")
    assert c.observed == pytest.approx(cand.hi - lo)
    assert "over the candidate's subgroups" in c.reason and c.passed


@pytest.mark.parametrize("require", [True, False])
def test_widening_the_reference_cannot_bound_follows_require_judgeable(pe, require):
    """When the reference's noisy counts give no AUROC at all for one of the candidate's
    subgroups (its positives' counts came out at or below zero), widening cannot be judged:
    like a gap over too few subgroups, it fails only where the policy requires a judgeable
    gap (it failed always, so a release's noise alone could block it)."""
    gone = [
        h.model_copy(update={"counts": [-1.0 for _ in h.counts]})
        if (h.model, h.attribute, h.group, h.label) == ("reference", "age_band", "70+", 1)
        else h
        for h in pe.histograms
    ]
    odd = pe.model_copy(update={"histograms": gone})
    pol = _private(
        fairness={
            "max_auroc_gap_widening": 1.0,
            "min_group_size": 400,
            "require_judgeable": require,
        }
    )
    cand = next(
        g for g in expected(odd, pol).gaps if (g.attribute, g.metric) == ("age_band", "auroc")
    )
    assert "70+" in cand.groups
    c = decide(odd, pol, f=facts(private_evaluation=odd)).check("auroc_gap_widening:age_band")
    assert c.observed is None and "not judged: the reference has no AUROC bounds" in c.reason
    assert c.passed is (not require)
    assert ("policy requires a judgeable gap" in c.reason) is require
