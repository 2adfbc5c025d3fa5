"""The audit's self-test (issue 18, item 4): white-box gradient canaries on every step,
1,000 canaries, a claimed ε below 1. Each deliberately broken mechanism (noise off, noise
× 0.1, a true sample rate ten times the charged one) must give a lower bound above the
claimed ε; the correct mechanism must not. Real Opacus (per-sample gradients, clipping and
noise in its DPOptimizer, Poisson sampling in its DPDataLoader); seeded, so each outcome is
the same in every run. A tiny model on 400 synthetic records: seconds per audit."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from dpgov.accounting import calibrate_noise_multiplier, epsilon
from dpgov.accounting.mechanism import DpSgdMechanism
from dpgov.training.canary_audit import (
    BLACK_BOX,
    WHITE_BOX,
    AuditMechanism,
    Breakage,
    run_audit,
)

Q, T, DELTA, M = 0.05, 80, 1e-5, 1000
CFG = SimpleNamespace(optimizer="sgd", learning_rate=0.2, momentum=0.0)


@pytest.fixture(scope="module")
def setting() -> Any:
    sigma = calibrate_noise_multiplier(target_epsilon=0.9, delta=DELTA, sample_rate=Q, steps=T)
    claimed = epsilon([DpSgdMechanism(noise_multiplier=sigma, sample_rate=Q, steps=T)], delta=DELTA)
    assert claimed <= 1.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=400) > 0).astype(np.float32)
    mech = AuditMechanism(noise_multiplier=sigma, sample_rate=Q, steps=T, max_grad_norm=1.0)
    return SimpleNamespace(x=x, y=y, mech=mech, claimed=claimed)


def _audit(s: Any, breakage: Breakage | None, *, threat_model: str = WHITE_BOX, seed: int = 11):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    return run_audit(
        model,
        s.x,
        s.y,
        mechanism=s.mech,
        epsilon_claimed=s.claimed,
        delta=DELTA,
        cfg=CFG,
        canaries=M,
        threat_model=threat_model,
        seed=seed,
        _breakage=breakage,
    )


def test_correct_mechanism_stays_below_the_claim(setting: Any) -> None:
    result = _audit(setting, None)
    assert result.steps == T and result.canaries == M
    assert result.epsilon_lower_bound <= setting.claimed
    assert result.passed
    assert result.ceiling > 3 * setting.claimed  # the audit could have shown a violation


@pytest.mark.parametrize(
    "breakage",
    [Breakage(noise_scale=0.0), Breakage(noise_scale=0.1), Breakage(sample_rate_factor=10.0)],
    ids=["noise-off", "noise-x0.1", "sample-rate-x10"],
)
def test_broken_mechanism_is_caught(setting: Any, breakage: Breakage) -> None:
    result = _audit(setting, breakage)
    assert result.epsilon_lower_bound > setting.claimed, result
    assert not result.passed
    assert result.epsilon_lower_bound <= result.ceiling + 1e-9


def test_noise_off_guesses_right_wherever_a_canary_was_sampled(setting: Any) -> None:
    result = _audit(setting, Breakage(noise_scale=0.0))
    # an included canary is never sampled in T steps with probability (1 - q)^T (1.6 % here):
    # only those can be guessed wrong, so the bound comes close to the audit's ceiling
    missed = (1 - Q) ** T
    assert result.correct >= result.guesses * (1 - 3 * missed)
    assert result.epsilon_lower_bound > 0.7 * result.ceiling


def test_black_box_input_canaries_run_and_bound_validly(setting: Any) -> None:
    result = _audit(setting, None, threat_model=BLACK_BOX)
    assert result.threat_model == BLACK_BOX and result.steps == T
    assert 0 <= result.epsilon_lower_bound <= setting.claimed
    assert set(result.to_dict()) >= {
        "epsilon_lower_bound",
        "epsilon_claimed",
        "ceiling",
        "canaries",
        "guesses",
        "correct",
        "delta",
        "confidence",
        "threat_model",
        "passed",
    }
