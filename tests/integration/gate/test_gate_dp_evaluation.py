"""``dpgov gate`` / ``promote`` on a DP-evaluated release (issue 17), with a real ledger and
registry: the release is charged to a test block (split ``test``) as the run side charges it
(the Gaussian mechanism as DP-SGD with q = 1, T = 1), recorded in the version's facts, and
judged from the record. Preview, gate and promote show the same figures; the ledger's test
block feeds the ``test_budget`` line; a spent test block says that fresh test data is needed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.integration.gate.conftest import MODEL

TEST_BLOCK = "test-1995"
N = 8000


def _private_policy(text: str) -> str:
    text = text.replace("judge_on: point", "judge_on: dp_interval")
    text = text.replace("max_auroc_gap_widening: 0.05", "max_auroc_gap_widening: null")
    text = text.replace("max_fnr_gap_widening: 0.05", "max_fnr_gap_widening: null")
    text = text.replace("required: 1 ", "required: 0 ")
    assert "dp_interval" in text and "required: 0" in text
    return text + "evaluation:\n  private: true\n  epsilon: 1.0\n  bins: 10\n"


def _release(reservation_id: str | None, *, seed: int = 3):
    from dpgov.training.dp_evaluation import release

    rng = np.random.default_rng(seed)
    p = rng.beta(1.2, 4.0, size=N)  # calibrated scores: y ~ Bernoulli(p)
    y = (rng.random(N) < p).astype(int)
    sensitive = pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], size=N),
            "age_band": rng.choice(["50-59", "60-69", "70+"], size=N),
        }
    )
    drawn = release(
        y,
        {"candidate": p},
        sensitive,
        threshold=0.3,
        epsilon=1.0,
        delta=1e-5,
        bins=10,
        attempt=1,
        test_blocks=[TEST_BLOCK],
        reservation_id=reservation_id,
        generator=np.random.default_rng(seed + 100),  # a fixed draw: the verdict is known
    )
    return drawn.model_copy(update={"noise_source": "os_entropy"})


def _charged(env, accountant: str = "pld"):
    """A private policy in force, a test block, a release charged to it and a version whose
    facts record that release."""
    from dpgov.policy import load_policy
    from dpgov.training.dp_evaluation import evaluation_mechanism

    text = _private_policy(env.policy_path.read_text())
    env.set_policy(text.replace("accountant: pld", f"accountant: {accountant}"))
    env.ledger.add_block(dataset="flchain", block=TEST_BLOCK, patients=N, split="test")
    drawn = _release(None)
    loaded = load_policy(env.policy_path)
    res = env.ledger.reserve(
        dataset="flchain",
        blocks=[TEST_BLOCK],
        mechanism=evaluation_mechanism(drawn),
        budget=loaded.policy.budget,
        policy_sha256=loaded.sha256,
    )
    env.ledger.commit(res.id, steps=1)
    pe = drawn.model_copy(update={"reservation_id": res.id})
    version, _ = env.register(private_evaluation=pe, reference=None)
    return version, pe


@pytest.fixture
def released(env):
    return _charged(env)


def test_the_release_epsilon_is_its_own_whatever_accountant_the_budget_uses(env, cli):
    """The release's ε is recomputed with the PLD (exact for one Gaussian), not the budget's
    looser RDP accountant, which would put a release calibrated to evaluation.epsilon over it."""
    version, pe = _charged(env, "rdp")
    data = json.loads(cli("gate", MODEL, version, "--preview", "--json").out)
    line = next(c for c in data["checks"] if c["name"] == "dp_evaluation")
    assert line["passed"], line["reason"]
    assert line["observed"] == pytest.approx(pe.epsilon, rel=1e-6)


DP_LINES = ("auroc", "calibration_error", "auroc_gap:sex", "fnr_gap:age_band")


def _figures(data):
    return {
        c["name"]: (c["observed"], c["noise_scale"], c["eta_check"], c["passed"])
        for c in data["checks"]
        if c["name"] in DP_LINES or c["name"].startswith(("dp_evaluation", "test_budget"))
    }


def test_preview_gate_and_promote_judge_the_same_recorded_release(env, cli, released):
    version, pe = released
    assert pe.noise_source == "os_entropy"
    preview = json.loads(cli("gate", MODEL, version, "--preview", "--json").out)
    gate = cli("gate", MODEL, version, "--json")
    recorded = json.loads(gate.out)
    assert _figures(preview) == _figures(recorded)
    assert recorded["evaluation"] == preview["evaluation"]
    ev = recorded["evaluation"]
    assert ev["attempt"] == 1 and ev["test_blocks"] == [TEST_BLOCK]
    assert ev["bounds"] == 2 + 2 * 2  # AUROC lo, ECE hi, the four gaps' upper bounds
    assert ev["eta_check"] == pytest.approx(0.05 * 6 / np.pi**2 / ev["bounds"])
    checks = {c["name"]: c for c in recorded["checks"]}
    assert checks["dp_evaluation"]["passed"], checks["dp_evaluation"]["reason"]
    assert checks["dp_evaluation"]["observed"] == pytest.approx(1.0, rel=1e-3)  # ledger's ε
    budget = checks[f"test_budget:flchain/{TEST_BLOCK}"]
    assert budget["passed"] and "over 1 release(s)" in budget["reason"]
    assert checks["auroc"]["noise_scale"] > 0
    # the recorded decision entry holds the same figures
    (entry,) = env.entries("gate_decision")
    assert entry.payload["evaluation"]["eta_check"] == ev["eta_check"]
    # the table shows a noise column
    table = cli("gate", MODEL, version, "--preview").out
    assert " noise " in table and "±" in table

    assert recorded["allowed"], recorded["failing"]
    # promote re-judges the same release, with the same figures
    r = cli("promote", MODEL, version, "--json")
    assert r.code == 0, r.out + r.err
    again = env.entries("gate_decision")[-1].payload
    assert _figures(again) == _figures(recorded)


def test_a_retired_test_block_says_fresh_test_data_is_needed(env, cli, released):
    version, _ = released
    env.ledger.retire_block(dataset="flchain", block=TEST_BLOCK, reason="spent by releases")
    data = json.loads(cli("gate", MODEL, version, "--preview", "--json").out)
    line = next(c for c in data["checks"] if c["name"] == f"test_budget:flchain/{TEST_BLOCK}")
    assert "fresh test data is needed" in line["reason"]
    assert data["evaluation"]["fresh_test_data_needed"] is True
    assert data["evaluation"]["blocks_retired"] == [TEST_BLOCK]


def test_a_release_whose_charge_is_not_in_the_ledger_fails(env, cli):
    env.set_policy(_private_policy(env.policy_path.read_text()))
    env.ledger.add_block(dataset="flchain", block=TEST_BLOCK, patients=N, split="test")
    version, _ = env.register(private_evaluation=_release("no-such-charge"), reference=None)
    r = cli("gate", MODEL, version, "--preview", "--json")
    assert r.code == 1
    data = json.loads(r.out)
    assert "dp_evaluation" in data["failing"]
    line = next(c for c in data["checks"] if c["name"] == "dp_evaluation")
    assert "not in the ledger" in line["reason"]


def test_a_private_policy_blocks_facts_without_a_release(env, cli):
    env.set_policy(_private_policy(env.policy_path.read_text()))
    version, _ = env.register()
    r = cli("gate", MODEL, version, "--json")
    assert r.code == 1
    data = json.loads(r.out)
    assert {"dp_evaluation", "auroc", "calibration_error"} <= set(data["failing"])
    assert data["evaluation"]["recorded"] is False
