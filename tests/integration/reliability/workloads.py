"""What the zygote's children do: a governed run, or a training job's reservations.

Each function receives the request and writes its outcome, as JSON, to ``request["result"]``:
``{"ok": true, ...}``, or ``{"ok": false, "error": TYPE, "message", "dpgov_error",
"exit_code"}`` when it raised.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def _failure(err: BaseException) -> dict[str, Any]:
    from dpgov.errors import DpgovError

    text = str(err).strip()
    return {
        "ok": False,
        "error": type(err).__name__,
        "message": text.splitlines()[0] if text else "",
        "dpgov_error": isinstance(err, DpgovError),
        "exit_code": getattr(err, "exit_code", None),
    }


def _write(request: dict[str, Any], outcome: dict[str, Any]) -> None:
    Path(request["result"]).write_text(json.dumps(outcome, default=str))


def _wait_for(path: str | None, timeout: float = 120) -> None:
    if path is None:
        return
    deadline = time.monotonic() + timeout
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def governed_run(request: dict[str, Any]) -> None:
    """``run_governed(params, policy)``: validate, plan, reserve, train, commit, evaluate,
    track, gate. The validation is recorded in (and reused from) ``validation_out``, by default
    the world's folder beside its prepared data (:func:`helpers.validation_folder`)."""
    ledger = None
    try:
        from dpgov.ledger import Ledger
        from dpgov.policy import load_policy
        from dpgov.training.governed import RunOptions, run_governed
        from dpgov.training.params import parse_params, prepared_path
        from tests.integration.reliability.helpers import validation_folder

        params = parse_params(request["params"])
        policy = load_policy(request["policy"])
        out = request.get("validation_out") or validation_folder(
            prepared_path(params), request["policy"]
        )
        _wait_for(request.get("go"))
        ledger = Ledger.open()
        summary = run_governed(
            params, policy, ledger=ledger, options=RunOptions(validation_out=str(out))
        )
        outcome: dict[str, Any] = {"ok": True, "summary": summary.to_dict()}
    except BaseException as err:  # the outcome is what the test inspects
        outcome = _failure(err)
    finally:
        if ledger is not None:
            ledger.close()
    _write(request, outcome)


def reservations(request: dict[str, Any]) -> None:
    """A training job outside dpgov's trainer, through the governed reserve step: for each set
    of ``blocks``, take σ (``noise_multiplier``, or calibrated for the target ε against what
    the blocks spent, as the plan step does with ``Ledger.calibrate``), reserve
    (``dpgov.training.steps.reserve``), then settle as a job would: commit every step, commit
    fewer (it stopped early), release (no step ran), abort (it crashed), or leave it pending
    (killed). Starts when the file ``go`` exists."""
    from dpgov.accounting import DpSgdMechanism
    from dpgov.errors import BudgetExceeded, Refused
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.training.steps import reserve

    rng = random.Random(request["seed"])
    outcomes: list[dict[str, Any]] = []
    try:
        ledger = Ledger.open(request["ledger_url"])
        loaded = load_policy(request["policy"])
        budget = loaded.policy.budget
        q, steps = request["sample_rate"], request["steps"]
        _wait_for(request.get("go"))
        for blocks in request["blocks"]:
            try:
                sigma = request.get("noise_multiplier") or ledger.calibrate(
                    dataset=request["dataset"],
                    blocks=blocks,
                    target_epsilon=request["target_epsilon"],
                    sample_rate=q,
                    steps=steps,
                    budget=budget,
                )
            except Refused as err:  # no σ the blocks can afford: nothing reserved
                outcomes.append({"blocks": blocks, "result": "unaffordable", "why": str(err)})
                continue
            plan = SimpleNamespace(
                dataset=request["dataset"],
                blocks=blocks,
                block_patients={b: request["patients"][b] for b in blocks},
                data_version=request.get("data_version"),
                mechanism=DpSgdMechanism(noise_multiplier=sigma, sample_rate=q, steps=steps),
                policy=loaded,
                target_epsilon=request["target_epsilon"],
                params=SimpleNamespace(train=SimpleNamespace(reproducible_noise=False)),
            )
            try:
                res = reserve(plan, ledger=ledger)  # type: ignore[arg-type]
            except BudgetExceeded as err:  # someone else was faster: refused, nothing written
                outcomes.append({"blocks": blocks, "result": "refused", "why": str(err)})
                continue
            settle = rng.choice(["commit", "commit_part", "release", "abort", "pending"])
            if settle == "commit":
                ledger.commit(res.id)
            elif settle == "commit_part":
                ledger.commit(res.id, steps=rng.randint(1, steps))
            elif settle == "release":
                ledger.release(res.id, reason="no step ran")
            elif settle == "abort":
                ledger.abort(res.id, reason="crashed")
            outcomes.append(
                {
                    "blocks": blocks,
                    "result": "granted",
                    "settled": settle,
                    "reservation": res.id,
                    "sigma": sigma,
                }
            )
        outcome: dict[str, Any] = {"ok": True, "outcomes": outcomes}
    except BaseException as err:
        outcome = {**_failure(err), "outcomes": outcomes}
    _write(request, outcome)
