"""Governed spending against a real SQLite ledger: what Opacus runs is what the ledger holds,
crashes stay charged, and bad input or a refused budget charges nothing.

The steps (plan, reserve, train, commit) are called one by one on data in memory; whole
governed runs (:func:`run_governed`: validate first) train on the module's ``world``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.errors import BudgetExceeded, Refused, UsageError
from dpgov.ledger import Ledger
from dpgov.policy import load_policy
from dpgov.testing.policies import put_in_force
from dpgov.training import planning
from dpgov.training import steps as governed_steps
from dpgov.training.governed import run_governed
from tests.filter_reference import filter_eps


def _steps(params: Any, policy: Path, data: Any, ledger: Ledger) -> tuple[Any, ...]:
    """plan → reserve → train → commit, returning everything each step gave."""
    loaded = load_policy(policy)
    p = planning.plan(params, loaded, data, ledger=ledger)
    reservation = governed_steps.reserve(p, ledger=ledger)
    outcome = governed_steps.train(p, reservation, ledger=ledger)
    entry = governed_steps.commit(reservation, outcome, ledger=ledger)
    return p, reservation, outcome, entry


def _status(ledger: Ledger, policy: Path, dataset: str, block: str) -> Any:
    return ledger.block_status(dataset, block, load_policy(policy).policy.budget)


def test_spent_epsilon_from_opacus_equals_the_ledger_charge(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    policy = write_policy()
    ledger = Ledger.open()
    params = small_params(noise_multiplier=None, target_epsilon=2.0)
    p, _, outcome, entry = _steps(params, policy, small_data, ledger)

    [(sigma, q, steps)] = outcome.result.history  # what Opacus's accountant recorded
    ran = DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
    assert DpSgdMechanism.from_dict(entry.payload["mechanism"]) == ran
    assert ran == p.mechanism  # nothing was lost or added between plan and run
    opacus_eps = epsilon([ran], delta=1e-5, accountant="pld")
    for block in p.blocks:
        status = _status(ledger, policy, p.dataset, block)
        # the fixed figure composes the charge with the policy's accountant (PLD); the
        # enforced one is the RDP filter's (the default rule), from an independent reference
        assert status.epsilon_spent_fixed == pytest.approx(opacus_eps, rel=1e-9)
        assert status.epsilon_spent == pytest.approx(filter_eps([ran], 1e-5), rel=1e-6)
        assert status.charges == 1 and status.pending == 0
    assert opacus_eps <= 2.0


def test_opacus_rdp_epsilon_agrees_with_an_rdp_ledger(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    from opacus.accountants import RDPAccountant

    policy = write_policy(accountant="rdp")
    ledger = Ledger.open()
    p, _, outcome, _ = _steps(small_params(), policy, small_data, ledger)
    acc = RDPAccountant()
    acc.history = list(outcome.result.history)
    opacus_eps = acc.get_epsilon(delta=1e-5)
    ledger_eps = _status(ledger, policy, p.dataset, p.blocks[0]).epsilon_spent_fixed
    assert ledger_eps == pytest.approx(opacus_eps, rel=0.02)


def test_second_run_is_calibrated_against_what_the_blocks_already_spent(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    policy = write_policy(epsilon_per_block=2.5, accountant="rdp")  # RDP: quick bisection
    ledger = Ledger.open()
    params = small_params(noise_multiplier=None, target_epsilon=2.0)
    first, *_ = _steps(params, policy, small_data, ledger)
    second, *_ = _steps(params, policy, small_data, ledger)
    assert second.noise_multiplier > first.noise_multiplier
    for block in second.blocks:
        assert _status(ledger, policy, second.dataset, block).epsilon_spent <= 2.5


def test_exception_mid_training_leaves_the_reservation_charged_and_aborted(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    policy = write_policy()
    ledger = Ledger.open()
    p = planning.plan(small_params(epochs=5), load_policy(policy), small_data, ledger=ledger)
    reservation = governed_steps.reserve(p, ledger=ledger)

    def interrupt(steps: int, _loss: float) -> None:
        if steps == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        governed_steps.train(p, reservation, ledger=ledger, on_step=interrupt)
    assert ledger.reservation(reservation.id).status == "aborted"
    full = filter_eps([p.mechanism], 1e-5)  # every planned step, by the enforced rule
    assert _status(ledger, policy, p.dataset, p.blocks[0]).epsilon_spent == pytest.approx(full)


def test_a_crashed_run_is_marked_failed_in_mlflow_with_its_reservation(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    from dpgov.tracking import runs

    ledger = Ledger.open()
    p = planning.plan(small_params(), load_policy(write_policy()), small_data, ledger=ledger)
    reservation = governed_steps.reserve(p, ledger=ledger)

    def crash(steps: int, _loss: float) -> None:
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        governed_steps.train(p, reservation, ledger=ledger, on_step=crash)
    [run] = runs.find_runs("dpgov", "dpgov.reservation", reservation.id)
    assert run["status"] == "FAILED"
    assert run["tags"]["dpgov.failure"] == "ValueError: disk full"


def test_failure_before_the_first_step_releases_the_reservation(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("out of memory before the first batch")

    monkeypatch.setattr(governed_steps, "train_private", broken)  # what the train step calls
    policy = write_policy()
    ledger = Ledger.open()
    p = planning.plan(small_params(), load_policy(policy), small_data, ledger=ledger)
    reservation = governed_steps.reserve(p, ledger=ledger)
    with pytest.raises(RuntimeError, match="out of memory"):
        governed_steps.train(p, reservation, ledger=ledger)
    assert ledger.reservation(reservation.id).status == "released"
    assert _status(ledger, policy, p.dataset, p.blocks[0]).epsilon_spent == 0.0


def test_no_training_under_a_reservation_for_another_mechanism(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    policy = write_policy()
    ledger = Ledger.open()
    loaded = load_policy(policy)
    p1 = planning.plan(small_params(), loaded, small_data, ledger=ledger)
    p2 = planning.plan(small_params(epochs=3), loaded, small_data, ledger=ledger)
    reservation = governed_steps.reserve(p1, ledger=ledger)
    with pytest.raises(UsageError, match="does not hold this plan's mechanism"):
        governed_steps.train(p2, reservation, ledger=ledger)


def test_fixed_sigma_over_the_target_is_bad_input_and_charges_nothing(
    home: Path,
    world: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    ledger = Ledger.open()
    params = world.params(small_params(noise_multiplier=0.3, target_epsilon=1.0))
    with pytest.raises(
        UsageError,
        match=r"train\.noise_multiplier: σ=0.3 .* over "
        r"train\.target_epsilon 1",
    ):
        run_governed(params, load_policy(write_policy()), ledger=ledger, options=run_options)
    assert ledger.entries("reservation") == []


def test_budget_refusal_exits_1_and_charges_nothing(
    home: Path,
    world: Any,
    world_data: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    ledger = Ledger.open()
    # ~400 training patients, batch 40: q ≈ 0.1, ~20 steps; σ = 1.5 costs ε ≈ 1.7 (PLD)
    params = world.params(small_params(noise_multiplier=1.5, target_epsilon=2.0, batch_size=40))
    planned = planning.plan(params, load_policy(write_policy()), world_data, ledger=ledger)
    one, two = (filter_eps([planned.mechanism] * k, 1e-5) for k in (1, 2))
    policy = write_policy(epsilon_per_block=(one + two) / 2)  # one run fits, two do not
    _steps(params, policy, world_data, ledger)
    put_in_force(policy, ledger=ledger)  # lowers the limit: in force at once
    before = len(ledger.entries())
    with pytest.raises(BudgetExceeded, match="budget refused for block") as err:
        run_governed(params, load_policy(policy), ledger=ledger, options=run_options)
    assert err.value.exit_code == 1
    assert len(ledger.entries()) == before


def test_cuda_requested_where_absent_is_bad_input_and_charges_nothing(
    home: Path,
    world: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ledger = Ledger.open()
    with pytest.raises(UsageError, match="no CUDA device"):
        run_governed(
            world.params(small_params(device="cuda")),
            load_policy(write_policy()),
            ledger=ledger,
            options=run_options,
        )
    assert ledger.entries() == []


def test_unknown_block_is_bad_input(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    ledger = Ledger.open()
    with pytest.raises(UsageError, match=r"train\.blocks: unknown block\(s\) \['nope'\]"):
        planning.plan(
            small_params(blocks=["nope"]), load_policy(write_policy()), small_data, ledger=ledger
        )


def test_several_records_per_patient_are_refused(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    small_data.train.loc[1, "patient_id"] = small_data.train.loc[0, "patient_id"]
    with pytest.raises(Refused, match="unit of privacy: patient 'p000000' has 2 training"):
        planning.plan(small_params(), load_policy(write_policy()), small_data, ledger=Ledger.open())


def test_training_on_named_blocks_charges_only_those(
    home: Path,
    small_data: Any,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    policy = write_policy()
    ledger = Ledger.open()
    p, *_ = _steps(small_params(blocks=["b1"]), policy, small_data, ledger)
    # b1's training patients: DP-SGD trains on those outside the validation split
    assert p.validation is not None and len(p.validation.y) > 0
    assert len(p.train.y) + len(p.validation.y) == small_data.meta["blocks"]["b1"]
    assert set(np.unique(p.validation.block)) == {"b1"}
    assert not set(p.train.patient_id) & set(p.validation.patient_id)
    assert _status(ledger, policy, p.dataset, "b1").charges == 1
    assert [b.block for b in ledger.blocks(p.dataset)] == ["b1"]  # b0 never touched


def test_cnn_on_images_runs_governed_with_book_keeping_clipping(
    home: Path,
    tmp_path: Path,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    from dpgov.testing.runs import governed_data
    from dpgov.training.governed import RETRYABLE, STEPS, RunOptions, call_step

    images = governed_data(tmp_path / "images", kind="image", n=160)
    params = images.params(small_params(model="cnn", epochs=1, batch_size=32, min_group_n=5))
    options = RunOptions(validation_out=str(tmp_path / "validation"))
    seen: list[tuple[str, bool]] = []

    def recording(name: str, fn: Any, /, *args: Any, retry: bool = False, **kw: Any) -> Any:
        seen.append((name, retry))
        return call_step(name, fn, *args, retry=retry, **kw)

    summary = run_governed(
        params, load_policy(write_policy()), ledger=Ledger.open(), options=options, step=recording
    )
    # every step went through the runner, in order, and only reading steps may retry
    # (membership-attack runs only with train.membership_attack)
    expected = [s for s in STEPS if s != "membership-attack"]
    assert [n for n, _ in seen] == expected and summary.gate is not None
    assert all(retry == (name in RETRYABLE) for name, retry in seen)
    assert summary.validation["ok"] is True
    # every layer of the CNN has a book-keeping rule: auto chooses bk (one backward pass)
    assert summary.plan["grad_sample_mode"] == "bk"
    # auto's reason (dpgov.training.clipping_modes), in the plan and as the run's MLflow param
    reason = summary.plan["grad_sample_mode_reason"]
    assert reason.startswith("auto chose bk") and "Conv2d" in reason
    import mlflow

    assert mlflow.get_run(summary.run_id).data.params["grad_sample_mode_reason"] == reason
    assert summary.steps == summary.plan["steps"]
    assert 0.0 <= summary.auroc <= 1.0
