"""Bounded accounting: out-of-domain input and work beyond one charge's bounds are one-line
refusals, decided before anything big is built; the sizes the guard predicts are the sizes
dp_accounting builds. The slow cases measured in issue 14 each run under a deadline here."""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator

import pytest

from dpgov.accounting import (
    AccountantFailed,
    AccountingInputError,
    AccountingTooCostly,
    DpSgdMechanism,
    bounded,
    build_pld,
    calibrate,
    calibrate_noise_multiplier,
    epsilon,
    get_accountant,
    over_limit_by_lower_bound,
    pld,
)
from dpgov.accounting.crosscheck import hypothesis_test_lower_bound
from dpgov.errors import Refused, UsageError
from dpgov.report.replay import Epsilons, compose_epsilon, merge_key

DELTA = 1e-5


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail the test (instead of hanging it) when the body runs longer than ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def mech(sigma: float, q: float, steps: int) -> DpSgdMechanism:
    return DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)


def clear_pld_caches() -> None:
    """PLDs built once are cached per process: a test that lowers a limit builds afresh."""
    for cached in (pld.poisson_gaussian_step, pld.poisson_gaussian_pld, pld._self_compositions):
        cached.cache_clear()


@pytest.fixture
def fresh_pld_cache() -> Iterator[None]:
    clear_pld_caches()
    yield
    clear_pld_caches()


# ---------------------------------------------------------------------- the measured cases


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize(
    ("sigma", "q", "steps", "message"),
    [
        (1e-300, 0.01, 1, r"noise_multiplier must be in \[1e-06, 1e\+06\] .*found 1e-300"),
        (1e308, 0.01, 1, r"noise_multiplier must be in .*found 1e\+308"),
        (1.0, 1e-320, 1, r"sample_rate must be in \[1e-12, 1\] .*found 9\.99989e-321"),
        (1e-9, 0.01, 100, r"noise_multiplier must be in .*found 1e-09"),  # params' 1e-9
    ],
)
def test_out_of_domain_input_is_a_one_line_usage_error(sigma, q, steps, message, accountant):
    with deadline(20), pytest.raises(AccountingInputError, match=message) as err:
        epsilon([mech(sigma, q, steps)], delta=DELTA, accountant=accountant)
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "message"),
    [  # before: 107 s and 1.6 GB; 257 s and 5.2 GB; a 3.4 TiB MemoryError
        (0.02, 1e-7, 1, r"one step's .* 8,605,781 points .* raise σ to at least 0\.07"),
        (0.01, 1e-8, 1, r"one step's .* 29,780,637 points .* raise σ to at least 0\.07"),
        (0.5, 1.0, 10**9, r"composed .* would need 465,\d{3},\d{3},\d{3} points .* at most 2,"),
    ],
)
def test_too_costly_pld_is_refused_in_seconds_saying_what_to_change(sigma, q, steps, message):
    with deadline(20), pytest.raises(AccountingTooCostly, match=message) as err:
        epsilon([mech(sigma, q, steps)], delta=DELTA)
    assert isinstance(err.value, Refused) and isinstance(err.value, AccountantFailed)
    assert err.value.exit_code == 1
    text = str(err.value)
    assert "\n" not in text and "rdp accountant" in text
    assert "(a hypothesis test) and at most" in text  # the cheap bounds, for comparison


def test_the_suggested_sigma_and_steps_do_fit():
    need = bounded.smallest_sigma_within(1e-7, pld.PLD_DISCRETIZATION, bounded.MAX_STEP_POINTS)
    assert bounded.gaussian_step_points(need, 1e-7, pld.PLD_DISCRETIZATION) <= (
        bounded.MAX_STEP_POINTS
    )
    assert bounded.gaussian_step_points(need / 1.02, 1e-7, pld.PLD_DISCRETIZATION) > (
        bounded.MAX_STEP_POINTS
    )
    parts = pld._self_compositions(0.5, 1.0, pld.PLD_DISCRETIZATION)
    fits = min(p.max_steps(bounded.MAX_POINTS, 10**9) for p in parts)
    assert 1_000 < fits < 10**9
    assert max(p.points(fits) for p in parts) <= bounded.MAX_POINTS
    assert max(p.points(fits + 1) for p in parts) > bounded.MAX_POINTS


def test_a_one_point_step_self_composes_in_seconds_and_never_below_the_references():
    # before: ran for minutes (dp_accounting evaluated 3**1e9 exactly, or composed T times)
    m = mech(100.0, 1e-9, 10**9)
    with deadline(20):
        eps = epsilon([m], delta=DELTA)
    assert 0 <= eps < 0.01
    assert eps >= hypothesis_test_lower_bound([m], DELTA)
    assert eps >= epsilon([m], delta=DELTA, accountant="rdp") - 1e-12


@pytest.mark.parametrize(("sigma", "q", "steps"), [(0.5, 1.0, 10**9), (100.0, 1e-9, 10**9)])
def test_prv_refuses_a_mesh_too_large_before_discretising(sigma, q, steps):
    with deadline(60), pytest.raises(AccountingTooCostly, match="PRV accountant would need"):
        epsilon([mech(sigma, q, steps)], delta=DELTA, accountant="prv")


def test_prv_out_of_domain_is_a_usage_error():
    with pytest.raises(AccountingInputError, match="sample_rate must be in"):
        get_accountant("prv").add({}, mech(1.0, 1e-13, 10))


# --------------------------------------------------- the guard predicts what is built


@pytest.mark.parametrize(("sigma", "q"), [(1.0, 0.01), (0.6, 0.1), (2.0, 1.0), (4.0, 1e-3)])
def test_step_points_are_the_sizes_dp_accounting_builds(sigma, q):
    step = pld.poisson_gaussian_step(sigma, q, pld.PLD_DISCRETIZATION)
    built = max(bounded.pmf_span(step._pmf_remove), bounded.pmf_span(step._pmf_add))
    assert bounded.gaussian_step_points(sigma, q, pld.PLD_DISCRETIZATION) == built


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, 0.01, 300), (0.6, 0.1, 50), (2, 1, 9)])
def test_self_composition_width_is_dp_accountings_truncation(sigma, q, steps):
    from dp_accounting.pld import common

    step = pld.poisson_gaussian_step(sigma, q, pld.PLD_DISCRETIZATION)
    composed = pld.self_compose(step, steps)
    for part, before, after in zip(
        pld._self_compositions(sigma, q, pld.PLD_DISCRETIZATION),
        (step._pmf_remove, step._pmf_add),
        (composed._pmf_remove, composed._pmf_add),
        strict=False,
    ):
        lo, hi = common.compute_self_convolve_bounds(
            bounded.dense_probs(before), steps, pld.PLD_TAIL_MASS_TRUNCATION
        )
        assert part.width(steps) == hi - lo + 1 == bounded.pmf_span(after)


def test_self_compose_matches_dp_accountings_own_where_that_one_finishes():
    step = pld.poisson_gaussian_step(100.0, 1e-9, pld.PLD_DISCRETIZATION)  # sparse, 3 points
    ours = pld.self_compose(step, 10_000)
    theirs = step.self_compose(10_000, pld.PLD_TAIL_MASS_TRUNCATION)
    assert ours.get_epsilon_for_delta(DELTA) == theirs.get_epsilon_for_delta(DELTA)


def test_composing_beyond_the_bound_is_refused(monkeypatch, fresh_pld_cache):
    """The refusal names the guard's size (the sum of the spans, before dp_accounting's
    truncation), over the bound and never below what composing builds; the exact counts
    differ between machines (one run of σ 1, q 0.01, 300 steps: 60 to 80 thousand points)."""
    acc = get_accountant("pld")
    state = acc.add(acc.empty(), mech(1.0, 0.01, 300))
    composed = acc.add(state, mech(1.0, 0.01, 300))  # within the default bound
    built = max(bounded.pmf_span(composed._pmf_remove), bounded.pmf_span(composed._pmf_add))
    one_run = bounded.pmf_span(state._pmf_remove)
    assert one_run < 100_000 and built < 2 * one_run  # (truncation trims the sum of spans)
    monkeypatch.setattr(bounded, "MAX_POINTS", 100_000)
    with pytest.raises(AccountingTooCostly) as refused:
        acc.add(state, mech(1.0, 0.01, 300))
    found = re.search(
        r"composing these charges would need .* of ([\d,]+) points", str(refused.value)
    )
    assert found is not None, str(refused.value)
    predicted = int(found.group(1).replace(",", ""))
    assert predicted > 100_000 and predicted >= built  # a size over the bound, never an under-count


# ------------------------------------------------------------------------ calibration


def test_calibration_skips_no_fitting_sigma_when_probes_use_the_lower_bound(monkeypatch):
    args = {"target_epsilon": 2.0, "delta": DELTA, "sample_rate": 0.01, "steps": 1000}
    plain = calibrate_noise_multiplier(**args)
    monkeypatch.setattr(calibrate, "LOWER_BOUND_FROM_POINTS", 0)  # every probe tries it first
    assert calibrate_noise_multiplier(**args) == pytest.approx(plain, rel=0.011)


def test_calibration_counts_a_too_costly_probe_as_not_fitting(monkeypatch, fresh_pld_cache):
    args = {"target_epsilon": 40.0, "delta": DELTA, "sample_rate": 0.01, "steps": 10}
    plain = calibrate_noise_multiplier(**args)
    limit = bounded.gaussian_step_points(plain * 1.5, 0.01, pld.PLD_DISCRETIZATION)
    monkeypatch.setattr(bounded, "MAX_STEP_POINTS", limit)
    clear_pld_caches()
    sigma = calibrate_noise_multiplier(**args)
    assert sigma >= plain * 1.45  # never below what can be accounted
    assert bounded.gaussian_step_points(sigma, 0.01, pld.PLD_DISCRETIZATION) <= limit
    assert epsilon([mech(sigma, 0.01, 10)], delta=DELTA) <= 40.0


def test_calibration_refuses_when_not_even_the_largest_sigma_can_be_accounted(
    monkeypatch, fresh_pld_cache
):
    monkeypatch.setattr(bounded, "MAX_STEP_POINTS", 1)
    with deadline(30), pytest.raises(AccountingTooCostly, match="one step's"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=0.01, steps=10)


def test_calibration_refuses_out_of_domain_sample_rates():
    with pytest.raises(AccountingInputError, match="sample_rate must be in"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=DELTA, sample_rate=1e-320, steps=1)


def test_the_lower_bound_refuses_only_above_the_limit():
    m = mech(0.5, 1.0, 100)
    lower = hypothesis_test_lower_bound([m], DELTA)
    assert over_limit_by_lower_bound([m], delta=DELTA, limit=lower / 2) == lower
    assert over_limit_by_lower_bound([m], delta=DELTA, limit=lower) is None
    assert over_limit_by_lower_bound([m], delta=DELTA, limit=epsilon([m], delta=DELTA)) is None


# ---------------------------------------------------------------- the ledger and the audit


def test_the_ledger_refuses_the_measured_cases_in_seconds_and_writes_nothing(ledger_url):
    from dpgov.ledger import Ledger
    from dpgov.policy.schema import Budget

    budget = Budget(epsilon_per_block=8.0, delta=DELTA, accountant="pld")
    led = Ledger.open(ledger_url)
    try:
        led.add_block(dataset="cohort", block="2001", patients=900)
        head = led.head()
        with deadline(30):
            for m, error in [
                (mech(0.02, 1e-7, 1), AccountingTooCostly),
                (mech(0.01, 1e-8, 1), AccountingTooCostly),
                (mech(0.5, 1.0, 10**9), AccountingTooCostly),
                (mech(1e-300, 0.01, 1), AccountingInputError),
                (mech(1.0, 1e-320, 1), AccountingInputError),
            ]:
                with pytest.raises(error):
                    led.reserve(dataset="cohort", blocks=["2001"], mechanism=m, budget=budget)
            led.reserve(
                dataset="cohort", blocks=["2001"], mechanism=mech(100.0, 1e-9, 10**9), budget=budget
            )
        assert led.head()[0] == head[0] + 1  # only the one that could be accounted
    finally:
        led.close()


def test_the_replay_refuses_a_stored_charge_too_costly_to_compose_in_seconds():
    key = merge_key([mech(0.02, 1e-7, 1), mech(1.0, 0.01, 100)])
    with deadline(20):
        with pytest.raises(AccountingTooCostly):
            compose_epsilon(key, DELTA, "pld")
        eps = Epsilons(workers=2)
        eps.prefetch([(key, DELTA, "pld"), (merge_key([mech(1.0, 0.01, 100)]), DELTA, "pld")])
        with pytest.raises(AccountantFailed):
            eps.of_key(key, delta=DELTA, accountant="pld")


def test_build_pld_checks_the_domain_itself():
    with pytest.raises(AccountingInputError, match="noise_multiplier must be in"):
        build_pld(mech(1e-7, 0.01, 1))


def test_never_sampled_delta_bounds_the_hockey_stick_divergence_at_zero():
    from dpgov.accounting.accountants import never_sampled_delta

    runs = [mech(1.0, 0.01, 10), mech(2.0, 0.001, 30)]
    p = never_sampled_delta(runs)
    assert p == pytest.approx(1 - 0.99**10 * 0.999**30, rel=1e-12)
    composed = get_accountant("pld").empty()
    for m in runs:
        composed = get_accountant("pld").add(composed, m)
    assert composed.get_delta_for_epsilon(0.0) <= p * 1.01  # (0, p)-DP, to discretisation
    assert never_sampled_delta([mech(1.0, 1.0, 1)]) == 1.0
