"""The governed run as a Prefect flow (``dpgov run``): wiring only.

The sequence is :func:`dpgov.training.governed.run_governed`; here each of its steps runs as a
task (:func:`pipelines.steps.prefect_step`). After the run the flow publishes two artifacts:
the gate decision as Markdown (``gate-decision``) and the dataset's block budgets as a table
(``block-budgets``). :func:`run_in_flow` is the same for use inside another flow (retraining,
the demo).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from dpgov.gate.markdown import decision_markdown
from dpgov.ledger import Ledger
from dpgov.policy import LoadedPolicy
from dpgov.training.governed import RunOptions, RunSummary, StepRunner, gate_now, run_governed
from dpgov.training.params import RunParams, load_params, parse_params
from pipelines import run_names, tasks
from pipelines.runtime import clock_snapshot, start_clock
from pipelines.steps import prefect_step


def run_params(params: dict[str, Any] | None) -> RunParams:
    """The run's params: a mapping shaped like params.yaml, or the default params file."""
    return load_params() if params is None else parse_params(params, source="params")


def run_in_flow(
    params: RunParams,
    policy: LoadedPolicy | None,
    ledger: Ledger,
    options: RunOptions,
    *,
    step: StepRunner = prefect_step,
) -> RunSummary:
    """The governed run, each step a task of the calling flow, then its artifacts. It enforces
    the policy in force on ``ledger`` (``policy``, when given, must be that one)."""
    summary = run_governed(params, policy, ledger=ledger, options=options, step=step)
    run_names.name_with_version(
        summary.model_name, summary.model_version, str(summary.plan["dataset"])
    )
    publish_budgets(summary.budgets, str(summary.plan["dataset"]))
    if summary.gate is not None:
        publish_gate(summary.gate)
    summary.timings = clock_snapshot()
    return summary


def run_gate(model: str, version: str, policy: LoadedPolicy, ledger: Ledger) -> dict[str, Any]:
    """The gate now, recorded, and published as a Markdown artifact; returns the decision."""
    gate = prefect_step("gate", gate_now, model, version, policy, ledger, retry=True)
    publish_gate(gate)
    return gate


def publish_budgets(rows: list[dict[str, Any]], dataset: str) -> None:
    """The dataset's block budgets as a table artifact."""
    tasks.publish_budgets(rows, f"privacy budget per block of {dataset} (ε spent rounded up)")


def publish_gate(gate: dict[str, Any]) -> None:
    """The gate decision (with its ledger entry and policy) as a Markdown artifact."""
    decision = {k: v for k, v in gate.items() if k not in ("ledger_seq", "policy_path")}
    tasks.publish_decision(
        decision_markdown(
            decision, policy_path=gate.get("policy_path"), ledger_seq=gate.get("ledger_seq")
        ),
        f"gate decision for {gate.get('model')} version {gate.get('version')}",
    )


@flow(name="governed-run", flow_run_name=run_names.training_name, persist_result=False)
def governed_run(
    params: dict[str, Any] | None = None,
    validation_out: str | None = None,
    gate: bool = True,
    progress: bool = False,
) -> RunSummary:
    """One governed DP training run (``dpgov run``).

    ``params``: a mapping shaped like params.yaml (``data``, ``train``, ``model``); None reads
    ./params.yaml, else the embedded defaults. The policy is the one in force on the ledger
    for the run's dataset (`dpgov policy set`), never a parameter.
    ``validation_out``: where validation results go (default data/validation/<dataset>).
    """
    start_clock()
    ledger = Ledger.open()
    try:
        return run_in_flow(
            run_params(params),
            None,
            ledger,
            RunOptions(gate=gate, validation_out=validation_out, progress=progress),
        )
    finally:
        ledger.close()
