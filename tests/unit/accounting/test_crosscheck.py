"""The PLD ε against bounds that share no code with the PLD builder, and the audit's replay
refusing a wrongly built PLD."""

from __future__ import annotations

import dataclasses
import math

import pytest
from scipy.stats import norm

from dpgov.accounting import (
    KINDS,
    AccountantFailed,
    DpSgdMechanism,
    check_pld_epsilon,
    epsilon,
)
from dpgov.accounting.crosscheck import hypothesis_test_lower_bound, rdp_upper_bound
from dpgov.accounting.pld import poisson_gaussian_pld
from dpgov.report.replay import Epsilons, compose_epsilon, merge_key

EXAMPLE = [
    DpSgdMechanism(noise_multiplier=1.1, sample_rate=256 / 60000, steps=2345),
    DpSgdMechanism(noise_multiplier=0.9, sample_rate=512 / 60000, steps=1000),
    DpSgdMechanism(noise_multiplier=1.5, sample_rate=1024 / 60000, steps=600),
]


def test_the_pld_lies_between_the_lower_and_the_upper_bound():
    eps = epsilon(EXAMPLE, delta=1e-5)
    lower = hypothesis_test_lower_bound(EXAMPLE, 1e-5)
    upper = rdp_upper_bound(EXAMPLE, 1e-5)
    assert 0.5 * eps < lower < eps < upper < 1.5 * eps
    check_pld_epsilon(EXAMPLE, delta=1e-5, epsilon=eps)  # does not raise


def test_the_lower_bound_is_tight_for_the_full_batch_gaussian():
    # q = 1: the sum test is the likelihood-ratio test; the bound is the closed form's ε
    sigma, steps, delta = 4.0, 9, 1e-5
    lower = hypothesis_test_lower_bound(
        [DpSgdMechanism(noise_multiplier=sigma, sample_rate=1.0, steps=steps)], delta
    )
    mu = math.sqrt(steps) / sigma
    closed = norm.cdf(-lower / mu + mu / 2) - math.exp(lower) * norm.cdf(-lower / mu - mu / 2)
    assert closed >= delta  # a lower bound: at this ε the mechanism is not yet (ε, δ)-DP
    assert closed <= delta * 1.01  # and tight


@pytest.mark.parametrize(
    ("factor", "message"),
    [(2.0, "is below ε=.*under-charges privacy"), (2 / 3, "exceeds the RDP upper bound")],
)
def test_check_refuses_an_epsilon_outside_the_bounds(factor, message):
    eps = epsilon(EXAMPLE, delta=1e-5)
    with pytest.raises(AccountantFailed, match=message):
        check_pld_epsilon(EXAMPLE, delta=1e-5, epsilon=eps / factor)


def wrong_builder(sigma_factor: float):
    """A PLD builder that gets σ wrong by ``sigma_factor``."""

    def build(m, discretization, count):
        return poisson_gaussian_pld(
            noise_multiplier=m.noise_multiplier * sigma_factor,
            sample_rate=m.sample_rate,
            steps=m.steps * count,
            discretization=discretization,
        )

    return build


@pytest.mark.parametrize(
    ("sigma_factor", "message"),
    [
        (1.5, "under-charges privacy"),  # too much noise assumed: ε too small
        (0.7, "exceeds the RDP upper bound"),  # too little: ε too large
    ],
)
def test_the_replay_catches_a_wrongly_built_pld(monkeypatch, sigma_factor, message):
    key = merge_key(EXAMPLE)
    right = compose_epsilon(key, 1e-5, "pld")
    monkeypatch.setitem(
        KINDS, "dp_sgd", dataclasses.replace(KINDS["dp_sgd"], pld=wrong_builder(sigma_factor))
    )
    with pytest.raises(AccountantFailed, match=message):
        compose_epsilon(key, 1e-5, "pld")
    with pytest.raises(AccountantFailed, match=message):  # what the audit's block check calls
        Epsilons(workers=1).of_key(key, delta=1e-5, accountant="pld")
    monkeypatch.undo()
    assert compose_epsilon(key, 1e-5, "pld") == right


def test_the_ledgers_accountant_uses_the_same_builder(monkeypatch):
    right = epsilon(EXAMPLE, delta=1e-5)
    monkeypatch.setitem(
        KINDS, "dp_sgd", dataclasses.replace(KINDS["dp_sgd"], pld=wrong_builder(1.5))
    )
    assert epsilon(EXAMPLE, delta=1e-5) < 0.8 * right
