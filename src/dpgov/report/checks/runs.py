"""Check 6: runs. Every DP run in MLflow (tag ``dpgov.private=true``, or one logging
``noise_multiplier`` or ``epsilon``) must name a ledger reservation whose dataset, blocks,
data version and entries match its tags, and log the ε the ledger gives
(:mod:`.run_figures`). Every reservation that names a run must find it in MLflow, not deleted;
a run still RUNNING after its reservation closed was killed or cut off from MLflow."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dpgov.contracts import (
    METRIC_EPSILON,
    PARAM_NOISE_MULTIPLIER,
    TAG_BLOCKS,
    TAG_COMMIT,
    TAG_DATA_VERSION,
    TAG_DATASET,
    TAG_LEDGER_ENTRIES,
    TAG_PRIVATE,
    TAG_RESERVATION,
)
from dpgov.policy import LoadedPolicy
from dpgov.report.checks.run_figures import check_figures, prefetch_figures, run_figures
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import Charge, Epsilons, Replay
from dpgov.report.rows import RunFigureCounts
from dpgov.tracking.records import RunRecord


def is_dp_run(run: RunRecord) -> bool:
    """A run that trained with DP: dpgov marks it, or it logs DP parameters or ε."""
    private = run.tags.get(TAG_PRIVATE)
    if private is not None:
        return private.lower() == "true"
    return (
        PARAM_NOISE_MULTIPLIER in run.params
        or METRIC_EPSILON in run.metrics
        or TAG_RESERVATION in run.tags
    )


def check_runs(
    r: Replay,
    runs: Sequence[RunRecord],
    eps: Epsilons,
    policy: LoadedPolicy,
    *,
    tracking_ok: bool,
    deep: bool = False,
) -> tuple[list[Finding], dict[str, RunRecord], RunFigureCounts]:
    """DP runs in MLflow against the ledger's charges, and the charges against MLflow;
    returns the findings, the run that claims each reservation, and how figures were checked."""
    out: list[Finding] = []
    claimed: dict[str, RunRecord] = {}
    figures = run_figures(r, eps, deep=deep)
    newest_first = sorted(runs, key=lambda x: x.start_time, reverse=True)
    committed = []
    for run in newest_first:
        c = r.charges.get(run.tags.get(TAG_RESERVATION) or "")
        if c is not None and c.status == "committed" and is_dp_run(run):
            committed.append((run, c))
    prefetch_figures(r, committed, figures, policy)
    for run in newest_first:
        if not is_dp_run(run):
            continue
        where: dict[str, Any] = {"run_id": run.run_id, "experiment": run.experiment}
        rid = run.tags.get(TAG_RESERVATION)
        if not rid:
            out.append(
                finding(
                    "run_without_charges",
                    f"DP run {run.run_id} ({run.name or 'unnamed'}, "
                    f"experiment {run.experiment!r}) names no ledger reservation: its privacy "
                    "loss was never charged to any block",
                    time=run.start_time,
                    **where,
                )
            )
            continue
        c = r.charges.get(rid)
        if c is None:
            out.append(
                finding(
                    "run_without_charges",
                    f"DP run {run.run_id} names reservation {rid}, which the ledger does not hold",
                    time=run.start_time,
                    reservation=rid,
                    **where,
                )
            )
            continue
        where["reservation"] = rid
        if rid in claimed and claimed[rid].run_id != run.run_id:
            out.append(
                finding(
                    "run_charge_mismatch",
                    f"runs {claimed[rid].run_id} and {run.run_id} both "
                    f"claim reservation {rid}: one charge paid for two runs",
                    time=run.start_time,
                    **where,
                )
            )
        claimed.setdefault(rid, run)
        out += _tags_vs_charge(run, c, where)
        if run.status == "RUNNING" and c.status != "pending":
            out.append(
                finding(
                    "run_left_running",
                    f"DP run {run.run_id} is still RUNNING in MLflow, but its reservation {rid} "
                    f"was {c.status} (entry {c.closed_seq}): the process ended without closing "
                    "the run, so its logged metrics may be incomplete; the charge stands",
                    time=c.closed_time or run.start_time,
                    **where,
                )
            )
        if c.status == "committed":
            out += check_figures(r, run, c, figures, policy, where)
    if tracking_ok:
        out += _charges_without_runs(r, {run.run_id: run for run in runs})
    return out, claimed, figures.counts()


def _charges_without_runs(r: Replay, by_id: dict[str, RunRecord]) -> list[Finding]:
    out = []
    for c in r.charges.values():
        if c.run_id is None:
            continue
        found = by_id.get(c.run_id)
        if found is None or found.deleted:
            what = "is not in the tracking store" if found is None else "was deleted"
            out.append(
                finding(
                    "charge_without_run",
                    f"reservation {c.id} (entry {c.seq}) names run {c.run_id}, which {what}",
                    reservation=c.id,
                    run_id=c.run_id,
                    seq=c.seq,
                    time=c.time,
                )
            )
    return out


def _json_list(text: str | None) -> list[Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _tags_vs_charge(run: RunRecord, c: Charge, where: dict[str, Any]) -> list[Finding]:
    diffs = []
    t = run.tags
    if t.get(TAG_DATASET) not in (None, c.dataset):
        diffs.append(f"dataset {t[TAG_DATASET]!r} (ledger: {c.dataset!r})")
    blocks = _json_list(t.get(TAG_BLOCKS))
    if blocks is not None and sorted(map(str, blocks)) != sorted(c.blocks):
        diffs.append(f"blocks {blocks} (ledger: {list(c.blocks)})")
    if c.data_version and t.get(TAG_DATA_VERSION) not in (None, c.data_version):
        diffs.append(f"data version {t[TAG_DATA_VERSION]} (ledger: {c.data_version})")
    entries = _json_list(t.get(TAG_LEDGER_ENTRIES))
    own = {c.seq, c.closed_seq}
    if entries is not None and not set(entries) <= own:
        diffs.append(
            f"ledger entries {entries} (the reservation's are "
            f"{sorted(s for s in own if s is not None)})"
        )
    commit = t.get(TAG_COMMIT)
    if commit is not None and (c.status != "committed" or commit != str(c.closed_seq)):
        diffs.append(
            f"commit entry {commit} (ledger: {c.status}"
            f"{' at entry ' + str(c.closed_seq) if c.closed_seq else ''})"
        )
    if c.run_id and c.run_id != run.run_id:
        diffs.append(f"the ledger's commit names run {c.run_id}")
    if c.status == "released" and run.status == "FINISHED":
        diffs.append("the run finished but its reservation was released (budget returned)")
    if not diffs:
        return []
    return [
        finding(
            "run_charge_mismatch",
            f"DP run {run.run_id} vs reservation {c.id}: " + "; ".join(diffs),
            time=run.start_time,
            **where,
        )
    ]
