"""Metrics from a DP-evaluated release: exact without noise, η bookkeeping, intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dpgov.errors import UsageError
from dpgov.gate.dp_facts import PrivateEvaluation
from dpgov.gate.dp_metrics import dp_metrics, eta_per_check, gap_key, subgroup_key
from dpgov.training.dp_evaluation import bin_index, count_histograms, release
from dpgov.training.evaluate import auroc, evaluate, false_negative_rate

THRESHOLD = 0.27


def _population(n: int = 800, seed: int = 3) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = np.clip(0.3 + 0.35 * (y - 0.3) + rng.normal(0, 0.2, n), 0, 1)
    sens = pd.DataFrame(
        {"sex": rng.choice(["F", "M"], n), "age_band": rng.choice(["<60", "60-69", "70+"], n)}
    )
    return y, p, sens


@pytest.fixture(scope="module")
def world() -> tuple[np.ndarray, np.ndarray, pd.DataFrame, PrivateEvaluation]:
    """A release of ``_population`` whose histograms are replaced by the exact counts, σ → 0."""
    y, p, sens = _population()
    pe = release(
        y,
        {"candidate": p},
        sens,
        threshold=THRESHOLD,
        epsilon=1.0,
        delta=1e-5,
        bins=20,
        attempt=1,
        test_blocks=["t"],
        reservation_id=None,
        generator=np.random.default_rng(0),
    )
    exact = count_histograms(y, {"candidate": p}, sens, edges=pe.edges)
    return y, p, sens, pe.model_copy(update={"histograms": exact, "sigma": 1e-12})


def test_without_noise_the_metrics_are_the_exact_ones_at_bin_resolution(world: tuple) -> None:
    y, p, sens, pe = world
    m = dp_metrics(pe, model="candidate", eta_check=0.01, min_group_n=30, min_group_positives=5)
    binned = bin_index(p, pe.edges)
    pred = (p >= THRESHOLD).astype(int)
    assert m.n == len(y) and m.positives == int(y.sum())
    assert m.auroc == pytest.approx(auroc(y, binned), abs=1e-12)
    assert m.accuracy == pytest.approx(float((pred == y).mean()), abs=1e-12)
    # ECE over the release's bins, each bin's midpoint as its confidence
    mids = (np.asarray(pe.edges[:-1]) + np.asarray(pe.edges[1:])) / 2
    ece = sum(abs(y[binned == b].sum() - mids[b] * (binned == b).sum()) for b in range(pe.bins))
    assert m.calibration_error == pytest.approx(ece / len(y), abs=1e-12)
    assert m.noise_scale["auroc"] < 1e-9  # no noise, no noise scale
    exact = evaluate(y, p, sens, threshold=THRESHOLD, n_boot=0, min_group_n=30,
                     min_group_positives=5)  # fmt: skip
    by_group = {(s.attribute, s.group): s for s in exact.subgroups}
    for s in m.subgroups:
        e = by_group[(s.attribute, s.group)]
        mask = sens[s.attribute].astype(str).to_numpy() == s.group
        assert (s.n, s.positives) == (e.n, e.positives)
        assert s.fnr == pytest.approx(false_negative_rate(y[mask], pred[mask]), abs=1e-12)
        assert s.fnr == pytest.approx(e.fnr, abs=1e-12)  # FNR exactly at the threshold
        assert s.auroc == pytest.approx(auroc(y[mask], binned[mask]), abs=1e-12)
    for g in m.gaps:
        values = [getattr(s, g.metric) for s in m.subgroups if s.attribute == g.attribute]
        assert g.groups_judged == len(values) >= 2
        assert g.gap == pytest.approx(max(values) - min(values), abs=1e-12)
        assert g.lo is not None and g.hi is not None and g.lo <= g.gap <= g.hi
        fnr_gap = next(
            x.gap for x in exact.gaps if x.attribute == g.attribute and x.metric == g.metric
        )
        if g.metric == "fnr":
            assert g.gap == pytest.approx(fnr_gap, abs=1e-12)


def test_bounds_hold_the_estimate_and_narrow_as_eta_grows(world: tuple) -> None:
    *_, pe = world
    tight = dp_metrics(pe, model="candidate", eta_check=0.2, min_group_n=30, min_group_positives=5)
    wide = dp_metrics(pe, model="candidate", eta_check=0.001, min_group_n=30, min_group_positives=5)
    for m in (tight, wide):
        assert m.auroc_lo is not None and m.auroc_hi is not None and m.auroc is not None
        assert m.auroc_lo < m.auroc < m.auroc_hi
        assert m.calibration_error is not None and m.calibration_error_hi is not None
        assert m.calibration_error_hi > m.calibration_error
    assert wide.auroc_lo is not None and tight.auroc_lo is not None
    assert wide.auroc_lo < tight.auroc_lo


def test_noise_widens_the_intervals_and_is_reported(world: tuple) -> None:
    *_, pe = world
    noisy = pe.model_copy(update={"sigma": 5.0})
    quiet = dp_metrics(pe, model="candidate", eta_check=0.01, min_group_n=30, min_group_positives=5)
    loud = dp_metrics(noisy, model="candidate", eta_check=0.01, min_group_n=30,
                      min_group_positives=5)  # fmt: skip
    assert loud.auroc == quiet.auroc  # same counts: same estimate
    assert loud.auroc_lo is not None and quiet.auroc_lo is not None
    assert loud.auroc_lo < quiet.auroc_lo
    assert loud.noise_scale["auroc"] > 0.01
    assert loud.noise_scale[subgroup_key("sex", "F", "fnr")] > 0
    assert loud.noise_scale[gap_key("age_band", "auroc")] > 0


def test_subgroups_are_judged_on_the_noisy_counts(world: tuple) -> None:
    *_, pe = world
    # shrink group "<60" to a handful of patients in every histogram: it is no longer judged
    hist = [
        h.model_copy(update={"counts": [c / 20 for c in h.counts]}) if h.group == "<60" else h
        for h in pe.histograms
    ]
    m = dp_metrics(pe.model_copy(update={"histograms": hist}), model="candidate",
                   eta_check=0.01, min_group_n=30, min_group_positives=5)  # fmt: skip
    gap = next(g for g in m.gaps if g.attribute == "age_band" and g.metric == "auroc")
    assert gap.groups_judged == 2 and gap.groups is not None and "<60" not in gap.groups
    row = next(s for s in m.subgroups if s.group == "<60")
    assert row.n < 30 and row.auroc_lo is None  # shown, not judged


def test_eta_is_split_over_checks_and_attempts_within_the_total() -> None:
    eta = 0.05
    assert eta_per_check(eta, 1, 1) == pytest.approx(eta * 6 / math.pi**2)
    assert eta_per_check(eta, 4, 2) == pytest.approx(eta * 6 / math.pi**2 / 4 / 4)
    total = sum(eta_per_check(eta, 5, k) * 5 for k in range(1, 100_000))
    assert total <= eta
    assert total == pytest.approx(eta, rel=1e-4)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 1, 1), r"eta must be in \(0, 1\)"),
        ((1.0, 1, 1), r"eta must be in \(0, 1\)"),
        ((0.05, 0, 1), "checks must be an integer >= 1"),
        ((0.05, 1, 0), "attempt must be an integer >= 1"),
    ],
)
def test_eta_per_check_refuses_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        eta_per_check(*args)


def test_unknown_model_is_refused(world: tuple) -> None:
    *_, pe = world
    with pytest.raises(UsageError, match="not in the release"):
        dp_metrics(pe, model="other", eta_check=0.01, min_group_n=30, min_group_positives=5)


def test_fnr_gap_bound_is_mover_inside_and_a_union_bound_at_the_edges() -> None:
    from dpgov.gate.dp_metrics import _fnr_gap_bounds, _FnrSides

    inner = _FnrSides(
        f=0.6, lo=0.5, hi=0.7, lo_pairs=0.45, hi_pairs=0.75, lo_half=0.48, hi_half=0.72
    )
    other = _FnrSides(
        f=0.2, lo=0.1, hi=0.3, lo_pairs=0.05, hi_pairs=0.35, lo_half=0.08, hi_half=0.32
    )
    lo, hi = _fnr_gap_bounds([inner, other])
    assert hi == pytest.approx(0.4 + math.sqrt(0.1**2 + 0.1**2))  # MOVER (Newcombe 1998)
    assert hi < inner.hi_half - other.lo_half  # narrower than the union bound
    assert lo == pytest.approx(0.4 - math.sqrt(0.15**2 + 0.15**2))
    # a score interval stopped at 1: its half-width is no standard error, the pair takes
    # the union bound from the bounds at eta/2
    top = _FnrSides(f=0.9, lo=0.4, hi=1.0, lo_pairs=0.3, hi_pairs=1.0, lo_half=0.35, hi_half=1.0)
    _, hi_edge = _fnr_gap_bounds([top, other])
    assert hi_edge == pytest.approx(min(1.0, top.hi_half - other.lo_half))


def test_overall_counts_combine_the_subgroup_sums_at_the_least_squares_variance() -> None:
    """Sex (2 groups) and age_band (3) each partition the patients: with the overall
    histogram, three independent estimates of it, of noise variance σ², 2σ² and 3σ²; their
    precision-weighted mean has σ²/W, W = 1 + 1/2 + 1/3 (the residual std over 40 draws ×
    42 counts is within 10 % of σ/√W, far from σ)."""
    from dpgov.gate.dp_metrics import _combined_overall

    y, p, sens = _population()
    residuals = []
    for seed in range(40):
        pe = release(y, {"candidate": p}, sens, threshold=THRESHOLD, epsilon=1.0, delta=1e-5,
                     bins=20, attempt=1, test_blocks=["t"], reservation_id=None,
                     generator=np.random.default_rng(seed))  # fmt: skip
        edges = pe.edges
        neg, pos, sigma_all = _combined_overall(pe, "candidate")
        exact = {
            (h.label, h.attribute): np.asarray(h.counts)
            for h in count_histograms(y, {"candidate": p}, sens, edges=edges)
            if h.attribute is None
        }
        residuals += [neg - exact[(0, None)], pos - exact[(1, None)]]
    w = 1 + 1 / 2 + 1 / 3
    assert sigma_all == pytest.approx(pe.sigma / math.sqrt(w))
    assert float(np.std(np.concatenate(residuals))) == pytest.approx(
        pe.sigma / math.sqrt(w), rel=0.1
    )
