"""Approving and releasing a federated model: every site signs off on its own ledger.

A federated candidate touches every site's patients, so each site's policy decides for its
site: an approval is recorded on each site's ledger (entry kind ``federated_approval``, by the
identity the deployment authenticates there, under that site's ``approvals`` rules), and the
gate is judged again per site from what the run recorded in MLflow
(``federated/charges.json``: the charges, the site evaluations, the author). Promotion moves
the registry alias (``release.alias`` of the sites' policies, which must agree) only when
every site's gate allows the version, and records a ``federated_promotion`` entry on each
site's ledger.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from dpgov.errors import Refused, UsageError
from dpgov.federated import gate as fgate
from dpgov.federated.sites import close_sites, open_sites
from dpgov.federated.types import FederatedSpec, OpenSite, SiteCharge
from dpgov.gate.standing import ApprovalRecord
from dpgov.identity import acting_identity
from dpgov.tracking import runs
from dpgov.tracking.store import mlflow_client

APPROVAL_KIND = "federated_approval"
PROMOTION_KIND = "federated_promotion"
ARTIFACT = "federated/charges.json"


def run_record(model: str, version: str) -> tuple[str, dict[str, Any]]:
    """The MLflow run of a federated model version and what it recorded (UsageError when the
    version is unknown or not federated)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr: one line
    try:
        info = runs.read_model_version(model, version)
    except Exception as err:
        raise UsageError(f"model {model} version {version}: not in the registry ({err})") from err
    run_id = str(info.get("run_id") or "")
    tags = info.get("tags") or {}
    if tags.get("dpgov.federated") != "true" or not run_id:
        raise UsageError(f"model {model} version {version} is not a federated candidate")
    return run_id, runs.read_json(run_id, ARTIFACT)


def approvals_on(site: OpenSite, model: str, version: str) -> list[ApprovalRecord]:
    out = []
    for e in site.ledger.entries(kind=APPROVAL_KIND):
        p = e.payload
        if p.get("model") == model and str(p.get("version")) == version:
            out.append(
                ApprovalRecord(
                    kind="approval",
                    by=str(p.get("by", "")),
                    text=str(p.get("note") or ""),
                    time=e.time,
                    seq=e.seq,
                    actor=e.actor,
                    identity=str(p.get("identity") or ""),
                )
            )
    return out


def approve(spec: FederatedSpec, model: str, version: str, *, note: str) -> dict[str, Any]:
    """Record an approval of ``model`` ``version`` on every site's ledger (all checked first:
    an approver a site's policy does not allow, or the author where a site forbids it, records
    nothing anywhere); then the gate per site, recorded."""
    _, record = run_record(model, version)
    author = str(record.get("author") or "")
    sites = open_sites(spec)
    try:
        _check_sites(sites, record)
        whos = {}
        for s in sites:
            who = acting_identity(s.ledger)
            rules = s.policy.policy.approvals
            if rules.approvers and who.name not in rules.approvers:
                raise UsageError(
                    f"site {s.name}: {who.name} may not approve (approvals.approvers); nothing "
                    f"recorded at any site"
                )
            if who.name == author and not rules.allow_author:
                raise UsageError(
                    f"site {s.name}: {who.name} trained this model and its policy keeps "
                    f"approvals.allow_author false; nothing recorded at any site"
                )
            whos[s.name] = who
        for s in sites:
            who = whos[s.name]
            s.ledger.append(
                kind=APPROVAL_KIND,
                payload={
                    "model": model,
                    "version": version,
                    "by": who.name,
                    "note": note.strip(),
                    "policy_sha256": s.policy.sha256,
                    **who.to_dict(),
                },
                actor=who.name,
            )
        return _regate(sites, spec, model, version, record)
    finally:
        close_sites(sites)


def regate(
    spec: FederatedSpec, model: str, version: str, *, promote: bool = False
) -> dict[str, Any]:
    """The gate per site now, recorded; with ``promote``, move the alias when every site
    allows (Refused, exit 1, when one blocks)."""
    _, record = run_record(model, version)
    sites = open_sites(spec)
    try:
        _check_sites(sites, record)
        gate = _regate(sites, spec, model, version, record)
        if promote:
            if not gate["allowed"]:
                blocked = [d["site"] for d in gate["sites"] if not d["allowed"]]
                raise Refused(f"not promoted: the gate blocks at {', '.join(blocked)}")
            gate["promotion"] = _promote(sites, model, version)
        return gate
    finally:
        close_sites(sites)


def _check_sites(sites: Sequence[OpenSite], record: dict[str, Any]) -> None:
    trained = set((record.get("sites") or {}).keys())
    given = {s.name for s in sites}
    if trained != given:
        raise UsageError(
            f"the federation names sites {sorted(given)}, the model was trained at "
            f"{sorted(trained)}"
        )


def _regate(
    sites: Sequence[OpenSite], spec: FederatedSpec, model: str, version: str, record: dict[str, Any]
) -> dict[str, Any]:
    evaluations = record.get("evaluations") or {}
    gaps = [fgate.site_gap(evaluations, m) for m in ("auroc", "fnr")]
    decisions = []
    for s in sites:
        mine = (record["sites"].get(s.name) or {}).get("charges") or []
        charges = [
            SiteCharge(
                site=s.name, mechanism=None, blocks=tuple(c["blocks"]), reservation=c["reservation"]
            )
            for c in mine
        ]
        decisions.append(
            fgate.decide_site(
                s,
                model=model,
                version=version,
                author=str(record.get("author") or ""),
                charges=charges,
                evaluation=evaluations.get(s.name),
                site_gaps=gaps,
                noise_source=str(record.get("noise_source") or ""),
                approvals=approvals_on(s, model, version),
            )
        )
    decisions = fgate.record_decisions(sites, decisions, model=model, version=version, run_id=None)
    return {**fgate.gate_table(decisions), "site_gaps": gaps}


def _promote(sites: Sequence[OpenSite], model: str, version: str) -> dict[str, Any]:
    aliases = {s.policy.policy.release.alias for s in sites}
    if len(aliases) != 1:
        raise UsageError(f"the sites' policies name different aliases: {sorted(aliases)}")
    alias = aliases.pop()
    mlflow_client().set_registered_model_alias(model, alias, version)
    for s in sites:
        s.ledger.append(
            kind=PROMOTION_KIND, payload={"model": model, "version": version, "alias": alias}
        )
    return {"alias": alias, "version": version}
