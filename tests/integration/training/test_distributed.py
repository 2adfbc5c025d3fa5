"""Patient-level DP-SGD over 2 gloo CPU processes (Opacus DPDDP), sharded by patient.

One module-scoped world: 40 patients holding 1-3 records each, all-zero inputs to a bias-free
linear model, so every data gradient is exactly zero and each step's update is the noise alone.
The update's std is then lr·σC·√T/(qP) when the noise enters once per step, and √2 times that
if each of the 2 ranks added its own (what the test would catch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from dpgov.accounting import DpSgdMechanism
from dpgov.training.distributed import patient_shards, rank_generators
from dpgov.training.params import TrainParams
from dpgov.training.trainer import sampling_plan

D = 1000  # parameters: samples of the update's noise per run
SIGMA, CLIP, LR, EPOCHS, BATCH = 1.0, 1.0, 1.0, 5, 10


def _cohort() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 4, size=40)
    patient_id = np.repeat([f"p{i:02d}" for i in range(40)], counts)
    rng.shuffle(patient_id)  # a patient's records are not contiguous
    x = np.zeros((len(patient_id), D), dtype=np.float32)
    y = rng.integers(0, 2, size=len(patient_id)).astype(np.float32)
    return x, y, patient_id


def _model() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 1, bias=False), torch.nn.Flatten(0))


def _cfg() -> TrainParams:
    return TrainParams(
        epochs=EPOCHS,
        batch_size=BATCH,
        max_grad_norm=CLIP,
        noise_multiplier=SIGMA,
        learning_rate=LR,
        optimizer="sgd",
        momentum=0.0,
        max_physical_batch_size=16,
        max_images_per_patient_step=2,
    )


@pytest.fixture(scope="module")
def dpddp() -> dict[str, Any]:
    from dpgov.training.distributed import train_patient_level_distributed
    from dpgov.training.trainer import StepCounter

    x, y, pid = _cohort()
    plan = sampling_plan(n=len(np.unique(pid)), batch_size=BATCH, epochs=EPOCHS)
    model = _model()
    initial = model[0].weight.detach().clone()
    counter = StepCounter()
    result, outcomes = train_patient_level_distributed(
        model,
        x,
        y,
        pid,
        plan=plan,
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        max_images_per_patient_step=2,
        cfg=_cfg(),
        world_size=2,
        backend="gloo",
        counter=counter,
    )
    return {
        "x": x,
        "y": y,
        "pid": pid,
        "plan": plan,
        "initial": initial,
        "result": result,
        "outcomes": outcomes,
        "counter": counter,
    }


def _expected_std(plan: Any) -> float:
    return LR * SIGMA * CLIP * math.sqrt(plan.steps) / plan.expected_batch_size


def test_ranks_hold_disjoint_patient_shards_covering_everyone(dpddp: dict[str, Any]) -> None:
    a, b = (set(o.patients) for o in dpddp["outcomes"])
    assert a and b
    assert not a & b
    assert a | b == set(dpddp["pid"].tolist())
    rows = patient_shards(dpddp["pid"], 2)
    for shard, o in zip(rows, dpddp["outcomes"], strict=True):
        assert set(dpddp["pid"][shard].tolist()) == set(o.patients)  # all records of each


def test_every_rank_ends_with_identical_weights(dpddp: dict[str, Any]) -> None:
    import torch

    first, second = dpddp["outcomes"]
    assert first.state_dict.keys() == second.state_dict.keys()
    for k in first.state_dict:
        assert torch.equal(first.state_dict[k], second.state_dict[k])
    moved = dpddp["result"].model[0].weight.detach() - dpddp["initial"]
    assert float(moved.abs().max()) > 0  # it did take noisy steps


def test_the_aggregated_noise_has_std_sigma_c_once_not_sqrt_w(dpddp: dict[str, Any]) -> None:
    plan = dpddp["plan"]
    update = (dpddp["result"].model[0].weight.detach() - dpddp["initial"]).numpy().ravel()
    expected = _expected_std(plan)
    measured = float(np.sqrt(np.mean(update**2)))  # mean zero: the data gradient is zero
    # D = 1000 samples: the estimate's relative sd is 1/sqrt(2D) = 2.2 %; 4.5 sd = 10 %
    assert abs(measured / expected - 1) < 0.10, (measured, expected)
    assert abs(measured / (math.sqrt(2) * expected) - 1) > 0.2  # not noise from both ranks


def test_the_charged_mechanism_is_the_single_process_plan(dpddp: dict[str, Any]) -> None:
    plan, result = dpddp["plan"], dpddp["result"]
    single = DpSgdMechanism(noise_multiplier=SIGMA, sample_rate=plan.sample_rate, steps=plan.steps)
    for o in dpddp["outcomes"]:
        assert o.history == [(SIGMA, plan.sample_rate, plan.steps)]
    ((s, q, t),) = result.history
    assert DpSgdMechanism(noise_multiplier=s, sample_rate=q, steps=t) == single
    assert dpddp["counter"].steps == result.steps == plan.steps
    assert plan.sample_rate == 1 / math.ceil(40 / BATCH)


def test_patient_shards_refuses_more_ranks_than_patients() -> None:
    from dpgov.errors import UsageError

    with pytest.raises(UsageError, match=r"train\.world_size: 3 ranks for 2 patients"):
        patient_shards(np.array(["a", "b", "a"]), 3)


def test_rank_generators_differ_by_rank_even_when_seeded() -> None:
    import torch

    from dpgov.gate.noise import NOISE_OS_ENTROPY, NOISE_SEED

    cpu = torch.device("cpu")
    for source in (NOISE_SEED, NOISE_OS_ENTROPY):
        (s0, n0), (s1, n1) = (rank_generators(source, 7, r, cpu) for r in (0, 1))
        assert not torch.equal(torch.rand(8, generator=s0), torch.rand(8, generator=s1))
        assert not torch.equal(torch.randn(8, generator=n0), torch.randn(8, generator=n1))


def test_a_rank_that_fails_leaves_every_planned_step_counted() -> None:
    """The ranks' progress is unknown to the parent: a crash must abort (fully charged), so
    the counter the governed run settles with holds all planned steps, never 0 (release)."""
    from dpgov.training.distributed import train_patient_level_distributed
    from dpgov.training.trainer import StepCounter

    x, y, pid = _cohort()
    plan = sampling_plan(n=len(np.unique(pid)), batch_size=BATCH, epochs=1)
    counter = StepCounter()
    bad_y = np.zeros((len(y), 2), dtype=np.float32)  # the loss fails inside every rank
    with pytest.raises(Exception, match="size"):
        train_patient_level_distributed(
            _model(),
            x,
            bad_y,
            pid,
            plan=plan,
            noise_multiplier=SIGMA,
            max_grad_norm=CLIP,
            max_images_per_patient_step=2,
            cfg=_cfg(),
            world_size=2,
            counter=counter,
        )
    assert counter.steps == plan.steps


def test_a_governed_run_on_two_processes_commits_the_planned_mechanism(
    home: Any, world: Any, run_options: Any, small_params: Any
) -> None:
    from dpgov.ledger import Ledger
    from dpgov.tracking import runs
    from dpgov.training.governed import run_governed

    params = world.params(small_params(epochs=1, grad_sample_mode="hooks", world_size=2))
    ledger = Ledger.open()
    summary = run_governed(params, ledger=ledger, options=run_options)
    plan = summary.plan
    [commit] = ledger.entries("commit")
    charged = DpSgdMechanism.from_dict(commit.payload["mechanism"])
    planned = DpSgdMechanism(
        noise_multiplier=1.5, sample_rate=plan["sample_rate"], steps=plan["steps"]
    )
    assert charged == planned and summary.steps == plan["steps"]
    assert runs.read_run(summary.run_id)["params"]["world_size"] == "2"


def test_two_processes_refuse_a_plan_that_clips_with_ghost_and_charge_nothing(
    home: Any, world: Any, run_options: Any, small_params: Any
) -> None:
    from dpgov.errors import UsageError
    from dpgov.ledger import Ledger
    from dpgov.training.governed import run_governed

    params = world.params(small_params(epochs=1, grad_sample_mode="ghost", world_size=2))
    ledger = Ledger.open()
    with pytest.raises(UsageError, match=r"train\.world_size: 2 processes clip with hooks"):
        run_governed(params, ledger=ledger, options=run_options)
    assert ledger.entries("commit") == [] and ledger.entries("abort") == []
    assert len(ledger.entries("release")) == 1
