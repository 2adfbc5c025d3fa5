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
from dpgov.data.imaging_cohort import write_cohort
from dpgov.data.ingest import init_repo, wave_path
from dpgov.errors import Refused, UsageError
from dpgov.gate.in_force import policy_in_force
from dpgov.gate.next_steps import still_blocking
from dpgov.identity import Identity, acting_identity
from dpgov.ledger import Ledger
from dpgov.ledger.policies import SET, set_policy
from dpgov.ledger.releases import binding_of
from dpgov.policy import load_policy
from dpgov.training.governed import RunOptions, RunSummary
from dpgov.training.params import data_params, embedded_params_path, load_params
from pipelines import run_names, tasks
from pipelines.approver import approver_url, open_approver, same_ledger
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
    then, with ``release``, :func:`ship` records the demo's release policy, approves (as the
    second identity of ``DPGOV_APPROVER_LEDGER_URL`` where one is given), promotes and
    audits."""
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
SINGLE_USER_REASON = (
    "dpgov demo: single-user release policy. approvals.allow_author: true, because on this "
    "machine one person trains and approves (with a second authenticated identity, "
    "dpgov demo --approver-ledger-url, it stays false). "
)
TWO_PERSON_REASON = (
    "dpgov demo: release policy approved by a second authenticated identity. "
    "approvals.allow_author: false, as packaged (the approver is another role on this ledger). "
)
FAIRNESS_REASON = (
    "fairness.max_fnr_gap and max_auroc_gap: off, for every attribute (one limit holds for "
    "all). The age-band gaps come from one decision threshold for every age in a cohort "
    "whose 5-year mortality rises steeply with age: the youngest band's few deaths fall below "
    "it, the oldest band's above it, for any model; no per-group operating point is chosen. "
    "The widening checks (fairness.max_*_gap_widening: 0.05) stay on, for every attribute: a "
    "gap may be no more than 0.05 wider than the non-private reference's, so privacy does "
    "not widen it. utility.max_auroc_drop: 0.1 (at most 0.1 below the reference's AUROC)"
)
RELEASE_REASON = SINGLE_USER_REASON + FAIRNESS_REASON  # the demo without a second identity


def release_reason(*, second_identity: bool) -> str:
    """Why the demo's release policy differs from the packaged one (recorded with it)."""
    return (TWO_PERSON_REASON if second_identity else SINGLE_USER_REASON) + FAIRNESS_REASON


def release_policy(path: Path, *, allow_author: bool = True) -> Path:
    """The embedded policy with the demo's release changes (:func:`release_reason`);
    ``allow_author`` false where a second identity approves."""
    file = embedded_policy()
    policy = yamlio.load_mapping(file, where=f"policy {file}")
    policy["approvals"]["allow_author"] = allow_author
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
    under it, approve it, promote it (the promotion re-checks the gate), then audit.

    The approver is the second authenticated identity of :data:`APPROVER_LEDGER_ENV` where
    one is given (the policy keeps ``approvals.allow_author: false``), else who acts (the
    author: the policy allows it). A check an approval cannot pass leaves the version
    unpromoted, said in ``status``; the audit runs either way."""
    dataset = str(plan["dataset"])
    url = approver_url()
    author = binding_of(ledger, model, version)
    approver = open_approver(ledger, url, author=author.author if author else None) if url else None
    try:
        return _ship(base, model, version, dataset, ledger, approver)
    finally:
        if approver is not None:
            approver[0].close()


def _ship(
    base: Path,
    model: str,
    version: str,
    dataset: str,
    ledger: Ledger,
    approver: tuple[Ledger, Identity] | None,
) -> dict[str, Any]:
    second = approver is not None
    reason = release_reason(second_identity=second)
    file = release_policy(base / "release-policy.yaml", allow_author=not second)
    seq = put_in_force(ledger, file, dataset, reason)
    loaded = policy_in_force(ledger, dataset)
    out: dict[str, Any] = {
        "policy_file": str(file),
        "policy_seq": seq,
        "policy_sha256": loaded.sha256,
        "policy_reason": reason,
        "author_may_approve": loaded.policy.approvals.allow_author,
        "approver": approver[1].to_dict() if approver else None,
    }
    before = run_gate(model, version, loaded, ledger)
    out["gate_before"] = before
    blocking = still_blocking(before["failing"])
    if blocking:
        out["status"] = f"not shipped: blocked by {', '.join(blocking)}"
    else:
        if approver is not None:
            if not same_ledger(ledger, approver[0]):  # checked at the start, and once more
                raise UsageError("the approver's ledger URL no longer reaches the demo's ledger")
            by, note, where = (
                approver[1].name,
                "dpgov demo: a second identity approves",
                approver[0],
            )
        else:
            by, note = acting_identity(ledger).name, "dpgov demo: the author approves"
            note, where = note + " (approvals.allow_author)", ledger
        entry = tasks.record_approval(model, version, by, note, loaded, where)
        out["approval"] = {
            "by": by,
            "ledger_seq": entry.seq,
            "authenticated_by": entry.payload.get("authenticated_by"),
            "author": entry.payload.get("author"),
        }
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
    out["statement"] = _statement(report, model, version)
    return out


def _statement(report: dict[str, Any], model: str, version: str) -> dict[str, Any] | None:
    """What the audit's release statement says of who approved the shipped version."""
    for rel in report.get("releases") or []:
        if rel.get("model") == model and str(rel.get("version")) == str(version):
            text = str(rel.get("statement_text") or "")
            said = next((p for p in text.split("\n") if p.startswith("Approved by the run")), "")
            return {
                "approvers": list((rel.get("statement") or {}).get("approvers") or []),
                "self_approval": said,
            }
    return None


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


# --------------------------------------------------------------------------- dpgov demo --images

IMAGES_DATASET = "imaging-demo"
IMAGES_MODEL = "dpgov-imaging-demo"
# The generated cohort (dpgov.data.imaging_cohort; no real image set ships offline): images
# of 16x16 pixels, patients with 1-4 images each; small enough that the demo, Prefect's
# start included, stays within about two minutes on a 2-core CPU.
IMAGES_COHORT = {"n_train": 900, "n_val": 100, "n_test": 400, "size": 16, "seed": 0}
IMAGES_PER_PATIENT = 4


def images_params(folder: Path, prepared: Path, contract: Path, metadata: Path) -> dict[str, Any]:
    """The demo's run params on the generated imaging cohort: the cnn, patient-level DP-SGD
    (batch_size counts patients), at most ``IMAGES_PER_PATIENT`` images per patient a step."""
    params = embedded_params(
        data=str(prepared),
        epochs=4,
        batch_size=32,
        max_images_per_patient_step=IMAGES_PER_PATIENT,
        learning_rate=0.5,
        max_grad_norm=1.0,
        min_group_n=20,
        n_boot=20,
        model_name=IMAGES_MODEL,
    )
    params["model"] = {**params["model"], "name": "cnn", "channels": [8, 16]}
    params["data"] = {
        "dataset": IMAGES_DATASET,
        "source": str(folder / f"{IMAGES_DATASET}.npz"),
        "contract": str(contract),
        "metadata": str(metadata),
        "seed": 0,
    }
    return params


@flow(name="demo-images", flow_run_name=run_names.training_name, persist_result=False)
def demo_images(home: str, progress: bool = False) -> dict[str, Any]:
    """``dpgov demo --images``: a generated imaging cohort (several images for some patients)
    prepared, versioned and validated; patient-level DP-SGD charged to the ledger
    (dpgov.training.patient_level); the candidate gated under the policy in force."""
    start_clock()
    base = Path(home)
    raw = base / "raw" / IMAGES_DATASET
    out = base / "prepared" / IMAGES_DATASET
    _npz, contract, metadata = write_cohort(
        raw, dataset=IMAGES_DATASET, images_per_patient=IMAGES_PER_PATIENT, **IMAGES_COHORT
    )
    chosen = run_params(images_params(raw, out, contract, metadata))
    prepared = tasks.prepare(str(out), data_params(chosen))
    init_repo(base, git=False)
    versioned = tasks.dvc_version(str(base), [str(out)], True, False, "dpgov demo --images")
    ledger = Ledger.open()
    try:
        run = run_in_flow(
            chosen,
            None,
            ledger,
            RunOptions(validation_out=str(base / "validation" / IMAGES_DATASET), progress=progress),
        )
    finally:
        ledger.close()
    run.data = {"prepare": prepared.to_dict(), "dvc": versioned.to_dict()}
    run.timings = clock_snapshot()
    result = run.to_dict()
    result.update(
        generated=True,
        cohort=(
            "generated imaging cohort (not real patients): "
            f"{IMAGES_COHORT['size']}x{IMAGES_COHORT['size']} images, "
            f"1-{IMAGES_PER_PATIENT} per patient"
        ),
        unit_of_privacy=run.plan["unit_of_privacy"],
        patient_level=run.plan["patient_level"],
        max_records_per_patient=run.plan["max_records_per_patient"],
    )
    return result
