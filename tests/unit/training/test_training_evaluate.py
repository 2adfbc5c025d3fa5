"""Evaluation: calibration error, FNR, subgroup judging, gaps and bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpgov.training.evaluate import (
    evaluate,
    expected_calibration_error,
    false_negative_rate,
    price_of_privacy,
)


def _scored(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = np.clip(0.3 + 0.4 * (y - 0.3) + rng.normal(0, 0.2, n), 0.01, 0.99)
    sens = pd.DataFrame({"sex": rng.choice(["F", "M"], n)})
    return y, p, sens


def test_expected_calibration_error_of_a_known_case() -> None:
    # bin [0.2, 0.3): p = 0.25, outcome rate 0.5 → |0.5 − 0.25| · (4/4)
    assert expected_calibration_error([0, 1, 0, 1], [0.25] * 4) == pytest.approx(0.25)


def test_perfectly_calibrated_bins_have_zero_error() -> None:
    assert expected_calibration_error([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == 0.0


def test_false_negative_rate_is_undefined_without_positives() -> None:
    assert math.isnan(false_negative_rate([0, 0, 0], [0, 1, 0]))


def test_false_negative_rate_counts_missed_positives() -> None:
    assert false_negative_rate([1, 1, 1, 0], [1, 0, 0, 0]) == pytest.approx(2 / 3)


def test_small_subgroup_is_shown_but_not_judged() -> None:
    y, p, sens = _scored()
    sens.loc[:9, "sex"] = "X"  # ten patients: below min_group_n
    ev = evaluate(y, p, sens, n_boot=0, min_group_n=30)
    groups = {s.group for s in ev.subgroups}
    assert groups == {"F", "M", "X"}
    gap = next(g for g in ev.gaps if g.metric == "auroc")
    assert gap.groups_judged == 2


def test_gap_is_largest_minus_smallest_judged_value() -> None:
    y, p, sens = _scored()
    ev = evaluate(y, p, sens, n_boot=0, min_group_n=30)
    values = [s.fnr for s in ev.subgroups]
    gap = next(g for g in ev.gaps if g.metric == "fnr")
    assert gap.gap == pytest.approx(max(values) - min(values))


def test_one_class_group_has_no_auroc() -> None:
    y, p, sens = _scored()
    sens.loc[y == 0, "sex"] = "F"
    sens.loc[y == 1, "sex"] = "M"
    ev = evaluate(y, p, sens, n_boot=0)
    assert all(s.auroc is None for s in ev.subgroups)
    gap = next(g for g in ev.gaps if g.metric == "auroc")
    assert (gap.gap, gap.groups_judged) == (0.0, 0)


def test_bootstrap_intervals_are_seeded_and_bracket_the_overall_auroc() -> None:
    y, p, sens = _scored()
    first = evaluate(y, p, sens, n_boot=20, seed=3)
    second = evaluate(y, p, sens, n_boot=20, seed=3)
    assert (first.auroc_lo, first.auroc_hi) == (second.auroc_lo, second.auroc_hi)
    assert first.auroc_lo is not None and first.auroc_hi is not None
    assert first.auroc_lo <= first.auroc <= first.auroc_hi
    assert all(s.auroc_lo is not None for s in first.subgroups)


def test_prevalence_threshold_is_the_test_positive_rate() -> None:
    y, p, sens = _scored()
    ev = evaluate(y, p, sens, n_boot=0, threshold="prevalence")
    assert ev.threshold == pytest.approx(y.mean())


def test_price_of_privacy_is_reference_minus_private_auroc() -> None:
    y, p, sens = _scored()
    good = evaluate(y, p, sens, n_boot=0)
    worse = evaluate(y, 0.5 * p + 0.25, sens, n_boot=0)
    noisy = evaluate(y, np.random.default_rng(1).random(len(y)), sens, n_boot=0)
    assert price_of_privacy(worse, good)["auroc_drop"] == pytest.approx(good.auroc - worse.auroc)
    assert price_of_privacy(noisy, good)["auroc_drop"] > 0.1


@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_intervals_are_fairlearns(seed: int) -> None:
    """The intervals equal fairlearn's MetricFrame bootstrap (same resamples, metric and
    quantiles), by group and for the between-groups gap, including a group too small to have
    both classes in every resample."""
    from fairlearn.metrics import MetricFrame

    from dpgov.training.evaluate import CI, auroc, bootstrap_ci

    y, p, sens = _scored(n=300, seed=seed)
    groups = sens["sex"].to_numpy().astype(object)
    groups[:12] = "X"  # a dozen patients: some resamples lack a class, AUROC is NaN there
    pred = (p >= 0.4).astype(int)
    for fn, values in ((auroc, p), (false_negative_rate, pred)):
        ours = bootstrap_ci(fn, y, values, groups.astype(str), n_boot=40, seed=seed)
        frame = MetricFrame(
            metrics={"m": fn},
            y_true=y,
            y_pred=values,
            sensitive_features=pd.Series(groups.astype(str), name="g"),
            n_boot=40,
            ci_quantiles=CI,
            random_state=seed,
        )
        lo, hi = frame.by_group_ci
        for g in ("F", "M", "X"):
            expected = [lo.loc[g, "m"], hi.loc[g, "m"]]
            got = [float("nan") if v is None else v for v in ours.by_group[g]]
            assert got == pytest.approx(expected, rel=1e-12, nan_ok=True)
        dlo, dhi = frame.difference_ci()
        assert list(ours.gap) == pytest.approx([dlo["m"], dhi["m"]], rel=1e-12)
    overall = MetricFrame(
        metrics={"m": auroc},
        y_true=y,
        y_pred=p,
        sensitive_features=pd.Series(np.zeros(len(y), dtype=int), name="all"),
        n_boot=40,
        ci_quantiles=CI,
        random_state=seed,
    )
    olo, ohi = overall.overall_ci
    ev = evaluate(y, p, pd.DataFrame({"sex": groups.astype(str)}), n_boot=40, seed=seed)
    assert [ev.auroc_lo, ev.auroc_hi] == pytest.approx([olo["m"], ohi["m"]], rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 1), min_size=2, max_size=60),
    data=st.data(),
)
def test_auroc_is_sklearns(labels: list[int], data: st.DataObject) -> None:
    """Ties included (scores drawn from a few values): the rank form equals sklearn's."""
    from sklearn.metrics import roc_auc_score

    from dpgov.training.evaluate import auroc

    scores = data.draw(
        st.lists(
            st.sampled_from([0.1, 0.2, 0.5, 0.7, 0.9]), min_size=len(labels), max_size=len(labels)
        )
    )
    if len(set(labels)) < 2:
        assert math.isnan(auroc(labels, scores))
    else:
        assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
