"""A governed run under a private-evaluation policy (issue 17), read back from the real SQLite
ledger and MLflow store: the release is charged to the test blocks (their ε is the
mechanism's), MLflow holds DP metrics and no exact test metric, the recorded release
recomputes to the logged values, a second run on the same test blocks is attempt 2; and the
refusals of bad input (exit 2) and of a release the test blocks cannot afford (exit 1) charge
nothing.

Two small governed runs share one module-scoped world (their home set up as the
``dpgov_home`` fixture does); the refusals plan against it and write nothing.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dpgov.errors import Refused, UsageError
from dpgov.gate.dp_metrics import dp_metrics
from dpgov.gate.facts import CandidateFacts
from dpgov.tracking import runs

# every test metric an exact evaluation logs (dpgov.training.evaluate.Evaluation.metrics)
EXACT_KEYS = {"auroc", "auroc_lo", "auroc_hi", "accuracy", "brier", "calibration_error"}
EXACT_PREFIXES = ("subgroup.", "gap.", "price.", "reference_auroc")
EVALUATION = {"private": True, "epsilon": 6.0, "bins": 4, "eta": 0.05}


def _policy_sections(**evaluation: Any) -> dict[str, Any]:
    return {
        "budget": {"epsilon_per_block": 30.0},
        "evaluation": {**EVALUATION, **evaluation},
        "utility": {"judge_on": "dp_interval"},
        "fairness": {"judge_on": "dp_interval", "min_group_size": 20, "min_group_positives": 3},
    }


@dataclass
class World:
    first: Any
    second: Any
    first_test_status: dict[str, Any]  # the test blocks after the first run only
    policy: Path
    params: Any
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[World]:
    from dpgov.data import DataParams, prepare
    from dpgov.ledger import Ledger
    from dpgov.testing.policies import put_in_force, write_policy
    from dpgov.testing.runs import governed_data
    from dpgov.training.governed import RunOptions, run_governed
    from dpgov.training.params import parse_params

    root = tmp_path_factory.mktemp("private-eval")
    home = root / "dpgov-home"
    home.mkdir()
    shutil.copy(mlflow_store_template, home / "mlflow.db")
    policy = write_policy(root / "policy.yaml", **_policy_sections())
    params: Any = parse_params(
        {
            "train": {
                "epochs": 1,
                "batch_size": 50,
                "n_boot": 0,
                "reference": True,
                "noise_multiplier": 1.5,
                "max_grad_norm": 1.0,
                "target_epsilon": 3.0,
                "model_name": "dpeval",
                "device": "cpu",
            },
            "model": {"name": "logreg"},
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPGOV_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.delenv("DPGOV_LEDGER_URL", raising=False)
        mp.delenv("DPGOV_LEDGER_HMAC_KEY", raising=False)
        options = RunOptions(validation_out=str(root / "validation"), gate=False)
        data = governed_data(root / "data", n=500, dataset="dpeval", seed=1)
        # registered as `data prepare` does: training and test blocks with their members
        prepare(
            data.data["source"],
            data.data["contract"],
            dataset="dpeval",
            out=data.prepared,
            params=DataParams(seed=1, min_block_patients=1),
        )
        params = data.params(params)
        ledger = Ledger.open()
        loaded = put_in_force(policy, ledger=ledger)
        first = run_governed(params, ledger=ledger, options=options)
        budget = loaded.policy.budget
        status = {
            b: ledger.block_status("dpeval", b, budget)
            for b in first.private_evaluation["test_blocks"]
        }
        second = run_governed(params, ledger=ledger, options=options)
        yield World(first, second, status, policy, params, root)
        ledger.close()


def _facts(run_id: str) -> CandidateFacts:
    return CandidateFacts.model_validate(runs.read_json(run_id, "candidate_facts.json"))


def test_the_release_is_charged_to_the_test_blocks_at_its_epsilon(world: World) -> None:
    import dp_accounting as dpa
    from dp_accounting import pld as dpa_pld

    from dpgov.accounting.filters import filter_epsilon
    from dpgov.accounting.kinds import rdp_vector
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.training.dp_evaluation import evaluation_mechanism

    budget = load_policy(world.policy).policy.budget
    pe = _facts(world.first.run_id).private_evaluation
    assert pe is not None and pe.test_blocks == world.first.private_evaluation["test_blocks"]
    assert pe.test_blocks and all(b.startswith("test-") for b in pe.test_blocks)
    mech = evaluation_mechanism(pe)
    assert (mech.sample_rate, mech.steps) == (1.0, 1)
    # the ledger charged exactly this mechanism, once, committed
    led = Ledger.open()  # the world's home (DPGOV_HOME)
    try:
        assert pe.reservation_id is not None
        res = led.reservation(pe.reservation_id)
    finally:
        led.close()
    assert (res.mechanism, res.status, sorted(res.blocks)) == (
        mech,
        "committed",
        sorted(pe.test_blocks),
    )
    # its ε: dp_accounting's PLD of the Gaussian event (independent of dpgov's accountants)
    # is the release's analytic ε; the ledger's tight figure bounds it from above (its
    # discretisation) and its enforced figure is the RDP filter's over the policy's orders
    event_pld = dpa_pld.PLDAccountant(value_discretization_interval=1e-4)
    event_pld.compose(dpa.GaussianDpEvent(mech.noise_multiplier))
    assert event_pld.get_epsilon(budget.delta) == pytest.approx(pe.epsilon, rel=1e-6)
    enforced = filter_epsilon(rdp_vector(mech, budget.orders, 1), budget.delta, budget.orders)
    for block, status in world.first_test_status.items():
        assert status.split == "test" and status.charges == 1, block
        assert pe.epsilon * (1 - 1e-9) <= status.epsilon_spent_fixed <= pe.epsilon * 1.05
        assert status.epsilon_spent == pytest.approx(enforced, rel=1e-6)
    # the training blocks are not charged by the release: one charge each after one run
    summary_blocks = set(world.first.plan["blocks"])
    assert not summary_blocks & set(pe.test_blocks)


def test_mlflow_holds_dp_metrics_and_no_exact_test_metric(world: World) -> None:
    for run_id in (world.first.run_id, world.first.reference_run_id):
        metrics = runs.read_run(run_id)["metrics"]
        assert {"dp_auroc", "dp_auroc_lo", "dp_auroc_hi", "dp_accuracy"} <= set(metrics)
        assert not EXACT_KEYS & set(metrics), run_id
        assert not [k for k in metrics if k.startswith(EXACT_PREFIXES)], run_id
        assert "dp_brier" not in metrics  # not computable from the histograms
    metrics = runs.read_run(world.first.run_id)["metrics"]
    pe = _facts(world.first.run_id).private_evaluation
    assert pe is not None
    assert metrics["evaluation_epsilon"] == pytest.approx(pe.epsilon)
    assert metrics["evaluation_sigma"] == pytest.approx(pe.sigma)
    assert metrics["evaluation_epsilon"] <= EVALUATION["epsilon"] * (1 + 1e-9)
    assert "dp_reference_auroc" in metrics


def test_the_recorded_release_recomputes_to_the_logged_values(world: World) -> None:
    facts = _facts(world.first.run_id)
    pe = facts.private_evaluation
    assert pe is not None and facts.brier is None
    metrics = runs.read_run(world.first.run_id)["metrics"]
    eta = metrics["evaluation_eta_check"]
    assert eta == pytest.approx(world.first.private_evaluation["eta_check"])
    again = dp_metrics(pe, model="candidate", eta_check=eta, min_group_n=20, min_group_positives=3)
    assert again.auroc == pytest.approx(metrics["dp_auroc"]) == pytest.approx(facts.auroc)
    assert again.auroc_lo == pytest.approx(metrics["dp_auroc_lo"])
    assert again.auroc_hi == pytest.approx(metrics["dp_auroc_hi"])
    assert again.accuracy == pytest.approx(facts.accuracy)
    assert again.calibration_error == pytest.approx(facts.calibration_error)
    assert [g.model_dump() for g in again.gaps] == [g.model_dump() for g in facts.gaps]
    assert again.subgroups == facts.subgroups
    ref = dp_metrics(pe, model="reference", eta_check=eta, min_group_n=20, min_group_positives=3)
    assert facts.reference is not None and facts.reference.auroc == pytest.approx(ref.auroc)
    assert world.first.auroc == pytest.approx(again.auroc)
    # the statement says which release it was and what it cost
    statement = runs.read_json(world.first.run_id, "privacy_statement.json")
    assert statement["evaluation"]["private"] is True
    assert statement["evaluation"]["epsilon"] == pytest.approx(pe.epsilon)
    assert statement["evaluation"]["test_blocks"] == pe.test_blocks
    assert not [x for x in statement["not_covered"] if x.startswith("the exact test metrics")]
    json.dumps(statement, allow_nan=False)


def test_the_release_publishes_the_declared_subgroups_not_those_the_data_holds(
    world: World,
) -> None:
    """One histogram per subgroup the contract declares (sex F/M, the age bands, each with
    unknown), also where the test split holds nobody of it: which subgroups occur is not
    released."""
    pe = _facts(world.first.run_id).private_evaluation
    assert pe is not None
    published = {
        (h.attribute, h.group)
        for h in pe.histograms
        if h.model == "candidate" and h.label == 1 and h.attribute is not None
    }
    assert {g for a, g in published if a == "sex"} == {"F", "M", "unknown"}
    assert {g for a, g in published if a == "age_band"} == {
        "<40",
        "40-59",
        "60-74",
        "75+",
        "unknown",
    }


def test_a_second_run_on_the_same_test_blocks_is_attempt_two(world: World) -> None:
    first = _facts(world.first.run_id).private_evaluation
    second = _facts(world.second.run_id).private_evaluation
    assert first is not None and second is not None
    assert (first.attempt, second.attempt) == (1, 2)
    assert second.test_blocks == first.test_blocks
    assert second.reservation_id != first.reservation_id
    assert second.histograms != first.histograms  # a new draw: a new charge
    metrics = runs.read_run(world.second.run_id)["metrics"]
    assert metrics["evaluation_attempt"] == 2
    # attempt 2 takes a smaller share of η (6/(π² k²)): narrower η, wider bounds
    assert metrics["evaluation_eta_check"] == pytest.approx(
        runs.read_run(world.first.run_id)["metrics"]["evaluation_eta_check"] / 4
    )


def _entries(world: World) -> int:
    from dpgov.ledger import Ledger

    led = Ledger.open()  # the world's home (DPGOV_HOME)
    try:
        return led.head()[0]
    finally:
        led.close()


def _plan_under(world: World, name: str, **evaluation: Any) -> Any:
    """Plan a run on the world's data under another policy (nothing is written)."""
    from dpgov.data import load_prepared
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.testing.policies import write_policy
    from dpgov.training.planning import plan

    policy = load_policy(
        write_policy(world.root / f"{name}.yaml", **_policy_sections(**evaluation))
    )
    data = load_prepared(world.params.train.data)
    led = Ledger.open()  # the world's home (DPGOV_HOME)
    try:
        return plan(world.params, policy, data, ledger=led)
    finally:
        led.close()


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"epsilon": 6.0, "epsilon_per_block": 5.0}, "cannot afford one gate"),
        ({"epsilon": 0.5, "bins": 20}, "no useful interval"),
    ],
)
def test_bad_evaluation_budgets_are_refused_before_anything_is_charged(
    world: World, evaluation: dict[str, Any], message: str
) -> None:
    before = _entries(world)
    with pytest.raises(UsageError, match=message) as err:
        _plan_under(world, "bad", **evaluation)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert _entries(world) == before


def test_a_release_the_test_blocks_cannot_afford_is_refused_with_nothing_charged(
    world: World,
) -> None:
    from dpgov.ledger import Ledger
    from dpgov.training.steps import reserve_evaluation

    # two releases spent: a cap that holds one more release alone but not three in all
    p = _plan_under(world, "capped", epsilon_per_block=EVALUATION["epsilon"] * 1.5)
    assert p.evaluation is not None and p.evaluation.attempt == 3
    before = _entries(world)
    led = Ledger.open()  # the world's home (DPGOV_HOME)
    try:
        with pytest.raises(Refused) as err:
            reserve_evaluation(p, ledger=led)
    finally:
        led.close()
    assert err.value.exit_code == 1
    assert _entries(world) == before
    assert math.isfinite(p.evaluation.enforced_epsilon)


def test_planning_never_trains_on_a_test_block(world: World) -> None:
    from dpgov.data import load_prepared
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.training.planning import plan

    train = world.params.train.model_copy(update={"blocks": ["test-2001"]})
    params = world.params.model_copy(update={"train": train})
    led = Ledger.open()  # the world's home (DPGOV_HOME)
    try:
        with pytest.raises(UsageError, match="unknown block"):
            plan(params, load_policy(world.policy), load_prepared(train.data), ledger=led)
    finally:
        led.close()


def test_spent_test_blocks_are_retired_and_then_fresh_test_data_is_needed(world: World) -> None:
    """Last in the module: it retires the world's test blocks."""
    import dataclasses

    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.training.private_eval import RETIRE_REASON, enforced_epsilon, retire_spent

    p = _plan_under(world, "again")
    assert p.evaluation is not None
    budget = load_policy(world.policy).policy.budget
    ev = p.evaluation
    two = enforced_epsilon(ev.mechanism, 2, budget, ev.domain)
    three = enforced_epsilon(ev.mechanism, 3, budget, ev.domain)
    led = Ledger.open()  # the world's home (DPGOV_HOME)
    try:
        # two releases are charged: a cap between two and three releases retires every block
        spent = dataclasses.replace(ev, cap=(two + three) / 2)
        assert retire_spent(spent, ledger=led, dataset="dpeval", budget=budget) == list(
            ev.test_blocks
        )
        retired = [e for e in led.entries("block_retired") if e.payload["block"] in ev.test_blocks]
        assert {e.payload["reason"] for e in retired} == {RETIRE_REASON}
        assert retire_spent(spent, ledger=led, dataset="dpeval", budget=budget) == []
    finally:
        led.close()
    with pytest.raises(Refused, match="fresh test data is needed") as err:
        _plan_under(world, "after")
    assert err.value.exit_code == 1
