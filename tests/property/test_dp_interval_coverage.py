"""Coverage of the DP-evaluated intervals on a generated population (seeded, a few hundred
releases): each bound misses the population value at most at its claimed rate η (within the
binomial error of the draws), while the same bounds computed as if there were no noise miss
far more often (so the test would fail if the intervals ignored the noise)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dpgov.gate.dp_metrics import dp_metrics
from dpgov.training.dp_evaluation import bin_index, release, release_edges
from dpgov.training.evaluate import auroc

THRESHOLD = 0.2
BINS = 10
ETA = 0.05
DRAWS = 300
TEST_N = 3000


def _population(size: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], size)
    logit = np.where(sex == "F", -1.8, -1.2) + rng.normal(0, 1, size)
    y = (rng.random(size) < 1 / (1 + np.exp(-logit))).astype(int)
    sep = np.where(sex == "F", 1.4, 0.9)
    score = 1 / (1 + np.exp(-(logit + sep * (y - 0.5) + rng.normal(0, 0.6, size))))
    return y, score, pd.DataFrame({"sex": sex})


def _truth(y: np.ndarray, s: np.ndarray, sens: pd.DataFrame) -> dict[str, float]:
    edges = release_edges(BINS, THRESHOLD)
    b = bin_index(s, edges)
    out = {"auroc": auroc(y, b)}
    for g in ("F", "M"):
        m = sens["sex"].to_numpy() == g
        pos = m & (y == 1)
        out[f"fnr.{g}"] = float((pos & (s < THRESHOLD)).sum() / pos.sum())
    out["fnr_gap"] = abs(out["fnr.F"] - out["fnr.M"])
    return out


@pytest.fixture(scope="module")
def misses() -> dict[str, list[bool]]:
    y, s, sens = _population()
    truth = _truth(y, s, sens)
    rng = np.random.default_rng(11)
    out: dict[str, list[bool]] = {}
    for _ in range(DRAWS):
        idx = rng.choice(len(y), TEST_N, replace=False)
        pe = release(
            y[idx],
            {"m": s[idx]},
            sens.iloc[idx].reset_index(drop=True),
            threshold=THRESHOLD,
            epsilon=0.5,
            delta=1e-5,
            bins=BINS,
            attempt=1,
            test_blocks=[],
            reservation_id=None,
            generator=rng,
        )
        for tag, record in (("dp", pe), ("noise_ignored", pe.model_copy(update={"sigma": 1e-9}))):
            m = dp_metrics(record, model="m", eta_check=ETA, min_group_n=30, min_group_positives=10)
            assert m.auroc_lo is not None
            out.setdefault(f"{tag}.auroc_lo", []).append(m.auroc_lo > truth["auroc"])
            for row in m.subgroups:
                assert row.fnr_hi is not None
                out.setdefault(f"{tag}.fnr_hi", []).append(row.fnr_hi < truth[f"fnr.{row.group}"])
            gap = next(g for g in m.gaps if g.metric == "fnr")
            assert gap.hi is not None and gap.groups_judged == 2
            out.setdefault(f"{tag}.fnr_gap_hi", []).append(gap.hi < truth["fnr_gap"])
    return out


def _allowed(draws: int) -> float:
    """η plus three binomial standard errors of a miss rate over ``draws``."""
    return ETA + 3 * math.sqrt(ETA * (1 - ETA) / draws)


@pytest.mark.parametrize("bound", ["auroc_lo", "fnr_hi", "fnr_gap_hi"])
def test_each_bound_misses_at_most_at_its_claimed_rate(
    misses: dict[str, list[bool]], bound: str
) -> None:
    got = misses[f"dp.{bound}"]
    assert np.mean(got) <= _allowed(len(got)), f"{bound} missed {np.mean(got):.3f}"


@pytest.mark.parametrize("bound", ["auroc_lo", "fnr_hi"])
def test_the_same_bounds_without_the_noise_miss_far_more_often(
    misses: dict[str, list[bool]], bound: str
) -> None:
    got = misses[f"noise_ignored.{bound}"]
    assert np.mean(got) > 2 * _allowed(len(got)), f"{bound} missed {np.mean(got):.3f}"
