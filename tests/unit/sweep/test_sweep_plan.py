"""The sweep's pure parts: parsing its arguments, composing its cost, pooling seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dpgov.errors import UsageError
from dpgov.training.evaluate import Evaluation
from dpgov.training.sweep import (
    compose_costs,
    interval,
    parse_epsilons,
    parse_seeds,
    summarise,
    summary_columns,
)


def test_epsilons_are_parsed_and_sorted() -> None:
    assert parse_epsilons("8, 1,3") == [1.0, 3.0, 8.0]
    assert parse_epsilons("0.5") == [0.5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty list"),
        ("   ", "empty list"),
        ("1,,3", "item 2 of '1,,3' is empty"),
        ("1,3,", "item 3 of '1,3,' is empty"),
        ("abc", "'abc' is not a number"),
        ("1;3", "'1;3' is not a number"),
        ("0", "finite number > 0, found '0'"),
        ("-1", "finite number > 0, found '-1'"),
        ("nan", "finite number > 0, found 'nan'"),
        ("1,2,1.0", "listed twice"),
        (",".join(str(i) for i in range(1, 22)), "at most 20 values"),
    ],
)
def test_bad_epsilon_lists_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=r"^--epsilons: ") as err:
        parse_epsilons(text)
    assert message in str(err.value)


@pytest.mark.parametrize(("text", "n"), [("1", 1), (" 3 ", 3), (2, 2)])
def test_seeds(text: str | int, n: int) -> None:
    assert parse_seeds(text) == n


@pytest.mark.parametrize("text", ["0", "-1", "101", "1.5", "x", ""])
def test_bad_seeds(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--seeds: "):
        parse_seeds(text)


def test_cost_is_the_composition_not_the_sum() -> None:
    from dpgov.accounting import DpSgdMechanism, epsilon

    a = DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.05, steps=100)
    b = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.05, steps=100)
    prior = DpSgdMechanism(noise_multiplier=1.5, sample_rate=0.01, steps=300)
    trials = [a, b, a, b]
    costs = compose_costs(
        {"x": [("r1", prior)], "y": []}, trials, limit=5.0, delta=1e-5, accountant="rdp"
    )
    x, y = costs
    assert (x.block, x.charges, y.charges) == ("x", 1, 0)
    assert x.spent == pytest.approx(epsilon([prior], delta=1e-5, accountant="rdp"))
    assert y.spent == 0.0
    assert x.sweep == y.sweep == pytest.approx(epsilon(trials, delta=1e-5, accountant="rdp"))
    assert x.after == pytest.approx(epsilon([prior, *trials], delta=1e-5, accountant="rdp"))
    assert y.after == pytest.approx(x.sweep)
    naive = sum(epsilon([m], delta=1e-5, accountant="rdp") for m in trials)
    assert x.sweep < naive
    assert x.fits == (x.after <= 5.0)
    assert x.remaining_after == pytest.approx(max(0.0, 5.0 - x.after))


def test_interval_pools_seeds() -> None:
    iv = interval([0.8, 0.9, None], [0.7, 0.8, None], [0.85, 0.95, None])
    assert iv["mean"] == pytest.approx(0.85)
    assert (iv["lo"], iv["hi"]) == (pytest.approx(0.75), pytest.approx(0.9))
    assert iv["sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert iv["n"] == 2
    one = interval([0.8], [None], [None])
    assert one["sd"] is None and one["lo"] is None
    assert interval([math.nan], [], [])["mean"] is None


def _evaluation(seed: int) -> Evaluation:
    from dpgov.training.evaluate import evaluate

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    scores = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1)
    sensitive = pd.DataFrame(
        {"sex": rng.choice(["F", "M"], 400), "age_band": rng.choice(["<60", "60-69", "70+"], 400)}
    )
    return evaluate(y, scores, sensitive, n_boot=5, seed=seed, min_group_n=20)


def test_summary_rows_per_epsilon_then_reference() -> None:
    from dpgov.accounting import DpSgdMechanism
    from dpgov.training.sweep import ReferenceResult, Trial, TrialResult

    def result(index: int, eps: float, seed: int) -> TrialResult:
        mech = DpSgdMechanism(noise_multiplier=1.0 / eps, sample_rate=0.1, steps=10)
        trial = Trial(index=index, epsilon=eps, seed=seed, mechanism=mech, epsilon_run=eps * 0.99)
        return TrialResult(
            trial=trial,
            run_id=f"run{index}",
            reservation=f"r{index}",
            ledger_entries=[1, 2],
            steps=10,
            epsilon_spent=eps * 0.99,
            evaluation=_evaluation(seed),
            seconds=1.0,
        )

    trials = [result(1, 1.0, 0), result(2, 3.0, 0), result(3, 1.0, 1), result(4, 3.0, 1)]
    rows = summarise(trials, ReferenceResult("ref", 0, _evaluation(7)))
    assert [r["variant"] for r in rows] == ["ε=1", "ε=3", "non-private"]
    assert [r["seeds"] for r in rows] == [2, 2, 1]
    assert rows[0]["runs"] == ["run1", "run3"]
    assert rows[0]["auroc"]["mean"] == pytest.approx(
        np.mean([trials[0].evaluation.auroc, trials[2].evaluation.auroc])
    )
    # subgroups in a natural order: "<60" before "60-69"
    assert [s["group"] for s in rows[0]["subgroups"]] == ["F", "M", "<60", "60-69", "70+"]
    flat = summary_columns(rows[0])
    assert flat["variant"] == "ε=1" and flat["seeds"] == 2
    assert {"auroc_sd", "gap_fnr.sex_lo", "subgroup_auroc.age_band.<60_hi"} <= set(flat)
    assert summary_columns(rows[-1])["auroc_sd"] is None


def test_a_block_fits_up_to_the_ledgers_round_off() -> None:
    from dpgov.training.sweep import BlockCost

    def cost(after: float) -> BlockCost:
        return BlockCost(block="b", charges=0, spent=0.0, sweep=after, after=after, limit=8.0)

    assert cost(8.0).fits and cost(8.0 * (1 + 1e-12)).fits
    assert not cost(8.0 * (1 + 1e-6)).fits
