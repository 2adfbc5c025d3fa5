"""The run side's rules for DP-evaluated releases (issue 17), against closed forms: the
validation split is a function of each patient alone; one release's enforced ε is the RDP
filter's over the Gaussian's closed-form RDP α/(2z²); the usefulness refusal sits exactly where
its stated half-width reaches 1/2."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpgov.accounting import DpSgdMechanism
from dpgov.accounting.filters import filter_epsilon
from dpgov.data.test_blocks import evaluation_block, is_evaluation_mechanism
from dpgov.errors import UsageError
from dpgov.policy.schema import Budget
from dpgov.training.private_eval import check_useful, enforced_epsilon
from dpgov.training.validation_split import validation_mask


def test_the_validation_split_is_a_function_of_each_patient_alone() -> None:
    ids = np.asarray([f"p{i:05d}" for i in range(4000)])
    mask = validation_mask(ids, 0.2, 0)
    assert abs(mask.mean() - 0.2) < 0.03  # binomial: sd 0.006
    # removing half the patients moves no one else; another seed is another split
    half = validation_mask(ids[::2], 0.2, 0)
    assert (half == mask[::2]).all()
    assert (validation_mask(ids, 0.2, 1) != mask).any()
    assert not validation_mask(ids, 0.0, 0).any()
    # a larger fraction keeps every patient the smaller one held out (u < f is monotone)
    assert (validation_mask(ids, 0.3, 0) | ~mask).all()


@settings(max_examples=25, deadline=None)
@given(z=st.floats(min_value=0.3, max_value=50.0), count=st.integers(min_value=1, max_value=5))
def test_enforced_epsilon_is_the_filter_over_the_gaussian_closed_form(z: float, count: int) -> None:
    budget = Budget(epsilon_per_block=10.0, delta=1e-5)
    mech = DpSgdMechanism(noise_multiplier=z, sample_rate=1.0, steps=1)
    orders = tuple(budget.orders)
    closed = [count * a / (2 * z * z) for a in orders]  # Mironov 2017, Prop. 7
    expected = filter_epsilon(closed, budget.delta, orders)
    assert enforced_epsilon(mech, count, budget, "d") == pytest.approx(expected, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    sigma=st.floats(min_value=0.1, max_value=200.0),
    bins=st.integers(min_value=2, max_value=60),
    eta=st.floats(min_value=1e-4, max_value=0.5),
)
def test_the_usefulness_refusal_sits_where_the_half_width_reaches_one_half(
    sigma: float, bins: int, eta: float
) -> None:
    q = NormalDist().inv_cdf(1 - eta / 2)
    boundary = 2 * q * sigma * math.sqrt((bins + 1) / 2)  # n at which the half-width is 1/2
    below = max(1, math.floor(boundary * (1 - 1e-9)))
    if below < boundary:
        with pytest.raises(UsageError, match="no useful interval") as err:
            check_useful(sigma=sigma, bins=bins, eta=eta, min_group_size=below)
        need = int(str(err.value).rsplit(" ", 1)[1])
        check_useful(sigma=sigma, bins=bins, eta=eta, min_group_size=need)  # the named n passes
    check_useful(sigma=sigma, bins=bins, eta=eta, min_group_size=math.floor(boundary) + 1)


def test_only_a_single_gaussian_release_counts_as_evaluation() -> None:
    assert evaluation_block("1998-2003") == "test-1998-2003"
    release = DpSgdMechanism(noise_multiplier=3.0, sample_rate=1.0, steps=1)
    assert is_evaluation_mechanism(release)
    assert not is_evaluation_mechanism(release.with_steps(2))
    assert not is_evaluation_mechanism(
        DpSgdMechanism(noise_multiplier=3.0, sample_rate=0.5, steps=1)
    )
