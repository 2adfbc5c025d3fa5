"""``dpgov demo``: the governed pipeline on the bundled flchain cohort, embedded defaults.

- :func:`demo`: prepare → validate → plan → reserve → train → commit → evaluate → track → gate,
  with everything under ``$DPGOV_HOME/demo``.
- :func:`demo_waves`: retraining over time. The cohort arrives in enrollment waves of whole
  blocks; each wave is ingested (DVC add, commit, push; new blocks registered) and retraining
  runs after it, under a scenario policy with a small budget per block so that, within three
  waves, the first blocks spend down and retire while newer blocks carry the later models.
  Each demonstration gets a fresh DVC repository under ``$DPGOV_HOME/demo/waves/<time>``; its
  dataset is named ``flchain-waves`` so it never shares budget with :func:`demo`'s ``flchain``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow

from dpgov import yamlio
from dpgov.data.ingest import init_repo, wave_path
from dpgov.errors import Refused
from dpgov.gate.in_force import policy_in_force
from dpgov.ledger import Ledger
from dpgov.ledger.policies import SET, set_policy
from dpgov.policy import load_policy
from dpgov.training.governed import RunOptions, RunSummary
from dpgov.training.params import data_params, embedded_params_path, load_params
from pipelines import run_names, tasks
from pipelines.governed import run_in_flow, run_params
from pipelines.ingest import ingest
from pipelines.retraining import retraining
from pipelines.runtime import clock_snapshot, start_clock

WAVES_DATASET = "flchain-waves"
WAVES_MODEL = "dpgov-flchain-waves"
# The scenario's budget: one run at the default target ε = 2 leaves a block 0.6, above the
# retirement floor 0.5 (a quarter of the target); the second run on it is calibrated down to
# what remains (σ up, ε of the run about 1.6), after which it is spent and the next wave
# retires it. So each block carries at most two models, and the newest blocks the latest.
WAVES_EPSILON_PER_BLOCK = 2.6


def embedded_params(**train: Any) -> dict[str, Any]:
    """The embedded default params (``dpgov/defaults/params.yaml``) with ``train`` overrides."""
    params = load_params(embedded_params_path()).model_dump(mode="json")
    params["train"].update(train)
    return params


def embedded_policy() -> Path:
    return embedded_params_path().parent / "policy.yaml"


@flow(name="demo", flow_run_name=run_names.training_name, persist_result=False)
def demo(home: str, params: dict[str, Any] | None = None, progress: bool = False) -> RunSummary:
    """Prepare the bundled cohort under ``home`` and run the governed steps on it."""
    start_clock()
    base = Path(home)
    out = base / "prepared" / "flchain"
    chosen = run_params(params if params is not None else embedded_params(data=str(out)))
    prepared = tasks.prepare(str(out), data_params(chosen))
    # versioned like any data dpgov trains on: the demo folder is a DVC repository pushing to
    # $DPGOV_HOME/dvc-remote, where `dpgov audit` finds every version a charge names
    init_repo(base, git=False)
    versioned = tasks.dvc_version(str(base), [str(out)], True, False, "dpgov demo")
    ledger = Ledger.open()
    try:  # the policy in force on the ledger (the packaged one until `dpgov policy set`)
        run = run_in_flow(
            chosen,
            None,
            ledger,
            RunOptions(validation_out=str(base / "validation" / "flchain"), progress=progress),
        )
    finally:
        ledger.close()
    run.data = {"prepare": prepared.to_dict(), "dvc": versioned.to_dict()}
    run.timings = clock_snapshot()
    return run


def scenario_policy(path: Path, epsilon_per_block: float) -> Path:
    """The embedded policy with a smaller budget per block, written to ``path``."""
    file = embedded_policy()
    policy = yamlio.load_mapping(file, where=f"policy {file}")
    policy["budget"]["epsilon_per_block"] = epsilon_per_block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def put_in_force(ledger: Ledger, file: Path, dataset: str, reason: str) -> int | None:
    """Put the policy ``file`` in force for ``dataset`` as `dpgov policy set` does (recorded,
    by whoever runs the demo); the entry's seq, or None when it is in force already. Refused
    when it would need approvals first (it raises a limit over charged blocks)."""
    loaded = load_policy(file)
    if policy_in_force(ledger, dataset).sha256 == loaded.sha256:
        return None
    entry, action = set_policy(ledger, loaded, dataset=dataset, reason=reason)
    if action != SET:
        raise Refused(
            f"the demo's scenario policy for {dataset} raises a limit over charged blocks: "
            f"recorded as proposal {entry.seq}, in force once approved (dpgov policy approve "
            f"{entry.seq})"
        )
    return entry.seq


@flow(name="demo-waves", persist_result=False)
def demo_waves(
    home: str,
    waves: int = 3,
    epsilon_per_block: float = WAVES_EPSILON_PER_BLOCK,
    min_remaining_epsilon: float | None = None,
    train: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Ingest the cohort in ``waves`` enrollment waves; retrain after each.

    ``train``: overrides of the embedded ``train:`` params (tests use fewer epochs).
    Returns the waves with what each ingested, how retraining chose, and the block budgets after
    it (``budgets``), plus the last gate decision.
    """
    started = time.perf_counter()
    root = Path(home) / "waves" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if root.exists():  # two demonstrations within a second
        root = root.with_name(root.name + f"-{time.perf_counter_ns() % 10_000:04d}")
    repo = init_repo(root / "repo")
    policy = scenario_policy(root / "policy.yaml", epsilon_per_block)
    ledger = Ledger.open()
    try:
        put_in_force(ledger, policy, WAVES_DATASET, "dpgov demo --waves: the scenario's budget")
    finally:
        ledger.close()
    prepared = repo / "prepared" / WAVES_DATASET
    params = embedded_params(data=str(prepared), model_name=WAVES_MODEL, **(train or {}))
    raw = repo / "raw" / f"{WAVES_DATASET}.csv"
    params["data"] = {"dataset": WAVES_DATASET, "source": str(raw)}
    arrivals = tasks.write_waves(str(root / "arrivals"), waves, data_params(run_params(params)))
    out: list[dict[str, Any]] = []
    for wave in arrivals:
        ingested = ingest(
            arrival=str(wave_path(root / "arrivals", wave.index)),
            raw=str(raw),
            prepared=str(prepared),
            repo=str(repo),
            params=params,
            git_commit=True,
        )
        retrained = retraining(
            params=params,
            min_remaining_epsilon=min_remaining_epsilon,
            require_new_data=True,
            validation_out=str(repo / "validation" / WAVES_DATASET),
            progress=progress,
        )
        out.append(
            {
                "wave": wave.index,
                "arrived_blocks": wave.blocks,
                "enrollment": [wave.values[0], wave.values[-1]],
                "ingest": ingested,
                "retraining": retrained,
            }
        )
    last = next(
        (w["retraining"]["run"] for w in reversed(out) if w["retraining"]["status"] == "trained"),
        None,
    )
    return {
        "dataset": WAVES_DATASET,
        "folder": str(root),
        "policy": str(policy),
        "epsilon_per_block": epsilon_per_block,
        "waves": out,
        "gate": last["gate"] if last else None,
        "seconds": time.perf_counter() - started,
    }
