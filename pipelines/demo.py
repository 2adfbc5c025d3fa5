"""``dpgov demo``: the governed pipeline on the bundled flchain cohort, embedded defaults.

- :func:`demo`: prepare → validate → plan → reserve → train → commit → evaluate → track → gate,
  with everything under ``$DPGOV_HOME/demo``; then both outcomes of a release: the candidate
  blocked under the policy in force, and (:func:`ship`) the release that ships under the demo's
  single-user release policy, recorded with `dpgov policy set`'s call, then audited.
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
from dpgov.gate.next_steps import still_blocking
from dpgov.identity import acting_identity
from dpgov.ledger import Ledger
from dpgov.ledger.policies import SET, set_policy
from dpgov.policy import load_policy
from dpgov.training.governed import RunOptions, RunSummary
from dpgov.training.params import data_params, embedded_params_path, load_params
from pipelines import run_names, tasks
from pipelines.governed import run_gate, run_in_flow, run_params
from pipelines.ingest import ingest
from pipelines.retraining import retraining
from pipelines.runtime import clock_snapshot, start_clock

WAVES_DATASET = "flchain-waves"
WAVES_MODEL = "dpgov-flchain-waves"
# The scenario's budget: under the default rule (the RDP filter, valid for adaptive
# retraining) one run at the default target ε = 2 (its own PLD ε) costs a block about 2.6 by
# the filter, leaving less than the retirement floor 0.5 (a quarter of the target): the next
# wave retires it. So each block carries one model, and the newest blocks the latest. (Under
# budget.composition: fixed, with the runs committed in advance, a block would carry two.)
WAVES_EPSILON_PER_BLOCK = 2.6


def embedded_params(**train: Any) -> dict[str, Any]:
    """The embedded default params (``dpgov/defaults/params.yaml``) with ``train`` overrides."""
    params = load_params(embedded_params_path()).model_dump(mode="json")
    params["train"].update(train)
    return params


def embedded_policy() -> Path:
    return embedded_params_path().parent / "policy.yaml"


@flow(name="demo", flow_run_name=run_names.training_name, persist_result=False)
def demo(
    home: str,
    params: dict[str, Any] | None = None,
    progress: bool = False,
    release: bool = True,
) -> RunSummary:
    """Prepare the bundled cohort under ``home`` and run the governed steps on it: the
    candidate is gated under the policy in force (blocked, at least for want of an approval);
    then, with ``release``, :func:`ship` records the demo's release policy, approves, promotes
    and audits."""
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
    if release and run.model_version is not None:
        ledger = Ledger.open()
        try:  # the second outcome: a release that ships, then audited
            run.release = ship(base, run.model_name, str(run.model_version), run.plan, ledger)
        finally:
            ledger.close()
    run.timings = clock_snapshot()
    return run


# the demo's release policy: what changes from the packaged one, and why (recorded with it)
RELEASE_REASON = (
    "dpgov demo: single-user release policy. approvals.allow_author: true (on this machine one "
    "person trains and approves; where a second authenticated identity exists, keep it false). "
    "fairness.max_fnr_gap and max_auroc_gap: off, because the age-band gaps are the cohort's "
    "own (5-year mortality at one decision threshold: the non-private reference shows the same "
    "FNR and AUROC gaps; no per-group operating point is chosen). The widening checks "
    "(fairness.max_*_gap_widening: 0.05) stay on: privacy must not widen those gaps; "
    "utility.max_auroc_drop: 0.1 (at most 0.1 below the reference's AUROC)"
)


def release_policy(path: Path) -> Path:
    """The embedded policy with the demo's single-user changes (:data:`RELEASE_REASON`)."""
    file = embedded_policy()
    policy = yamlio.load_mapping(file, where=f"policy {file}")
    policy["approvals"]["allow_author"] = True
    policy["fairness"]["max_fnr_gap"] = None
    policy["fairness"]["max_auroc_gap"] = None
    policy["utility"]["max_auroc_drop"] = 0.1  # and at most 0.1 below the reference's AUROC
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# dpgov demo release policy (written by dpgov demo; see the reason it was set with)\n"
        + yaml.safe_dump(policy, sort_keys=False)
    )
    return path


def ship(
    base: Path, model: str, version: str, plan: dict[str, Any], ledger: Ledger
) -> dict[str, Any]:
    """Record the release policy for the dataset (`dpgov policy set`), gate the candidate
    under it, approve it as who acts (the author: the policy allows it), promote it (the
    promotion re-checks the gate), then audit. A check an approval cannot pass leaves the
    version unpromoted, said in ``status``; the audit runs either way."""
    dataset = str(plan["dataset"])
    file = release_policy(base / "release-policy.yaml")
    seq = put_in_force(ledger, file, dataset, RELEASE_REASON)
    loaded = policy_in_force(ledger, dataset)
    out: dict[str, Any] = {
        "policy_file": str(file),
        "policy_seq": seq,
        "policy_sha256": loaded.sha256,
        "policy_reason": RELEASE_REASON,
        "author_may_approve": loaded.policy.approvals.allow_author,
    }
    before = run_gate(model, version, loaded, ledger)
    out["gate_before"] = before
    blocking = still_blocking(before["failing"])
    if blocking:
        out["status"] = f"not shipped: blocked by {', '.join(blocking)}"
    else:
        who = acting_identity(ledger).name
        entry = tasks.record_approval(
            model, version, who, "dpgov demo: the author approves (approvals.allow_author)",
            loaded, ledger,
        )  # fmt: skip
        out["approval"] = {"by": who, "ledger_seq": entry.seq}
        try:
            promoted = tasks.promote(model, version, loaded, ledger, None)
        except Refused as err:
            out["status"] = f"not shipped: {err}"
        else:
            out["promotion"] = promoted.to_dict()
            out["status"] = f"shipped: {model} version {version} is @{promoted.alias}"
    report = tasks.audit(str(base), 24.0)
    out["audit"] = {
        "ok": bool(report.get("ok")),
        "findings": report.get("findings") or [],
    }
    return out


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
