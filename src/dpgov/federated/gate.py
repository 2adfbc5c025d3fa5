"""The federated gate: one decision per site, under the policy in force on that site's ledger.

A federated model is released only when every site's gate allows it: each site judges its own
patients' budget (its ledger, its policy), the charges this run made there, the model on its
own test split, and the approvals recorded on its ledger. The site is one more fairness
attribute: the gap between the best and the worst site's AUROC (and false-negative rate) is
judged against the policy's subgroup limits at every site, and the worst site is named, with
whether it is the smallest (a model that fails the smallest hospital fails there).

Each decision is recorded on its site's ledger (entry kind ``federated_gate``) and as tags on
the registered model version. The checks reuse the gate's :class:`~dpgov.gate.decision.Check`
lines, so the tables read like ``dpgov gate``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dpgov.contracts import json_safe
from dpgov.federated.types import OpenSite, SiteCharge
from dpgov.gate.decision import Check
from dpgov.gate.standing import ApprovalRecord, standing

ENTRY_KIND = "federated_gate"


@dataclass(frozen=True)
class SiteDecision:
    site: str
    checks: tuple[Check, ...]
    approvers: tuple[str, ...] = ()
    ledger_seq: int | None = None

    @property
    def allowed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "allowed": self.allowed,
            "failing": [c.name for c in self.checks if not c.passed],
            "checks": [c.to_dict() for c in self.checks],
            "approvers": list(self.approvers),
            "ledger_seq": self.ledger_seq,
        }


def site_gap(evaluations: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """The site as a fairness attribute: best minus worst site on ``metric`` (sites whose
    test split cannot give it are not judged), the worst site, and whether it is the
    smallest (fewest training patients)."""
    values = {
        s: float(e[metric])
        for s, e in evaluations.items()
        if e.get(metric) is not None and math.isfinite(float(e[metric]))
    }
    sizes = {s: int(e.get("train_patients") or 0) for s, e in evaluations.items()}
    smallest = min(sizes, key=lambda s: (sizes[s], s)) if sizes else None
    if len(values) < 2:
        return {
            "metric": metric,
            "gap": None,
            "worst": None,
            "smallest": smallest,
            "judged": len(values),
        }
    worse_is_low = metric == "auroc"
    worst = (
        min(values, key=values.__getitem__) if worse_is_low else max(values, key=values.__getitem__)
    )
    return {
        "metric": metric,
        "gap": max(values.values()) - min(values.values()),
        "worst": worst,
        "smallest": smallest,
        "worst_is_smallest": worst == smallest,
        "judged": len(values),
        "values": values,
    }


def decide_site(
    site: OpenSite,
    *,
    model: str,
    version: str | None,
    author: str,
    charges: Sequence[SiteCharge],
    evaluation: Mapping[str, Any] | None,
    site_gaps: Sequence[Mapping[str, Any]],
    noise_source: str,
    approvals: Sequence[ApprovalRecord] = (),
) -> SiteDecision:
    """The checks of one site (pure but for reading the site's ledger). ``approvals``: the
    site's ``federated_approval`` records of this version (:mod:`dpgov.federated.release`)."""
    pol = site.policy.policy
    checks: list[Check] = []
    ver = site.ledger.verify()
    checks.append(
        Check(
            "ledger_chain",
            bool(ver.ok),
            True,
            bool(ver.ok),
            "the site's ledger chain verifies" if ver.ok else f"chain broken: {ver}",
        )
    )
    statuses = site.ledger.budget(pol.budget, dataset=site.dataset)
    train = [b for b in statuses if b.block in set(site.blocks)]
    worst = max((b.epsilon_spent for b in train), default=0.0)
    limit = pol.budget.epsilon_per_block
    checks.append(
        Check(
            "cumulative_epsilon",
            round(worst, 4),
            limit,
            worst <= limit * (1 + 1e-9),
            f"largest ε spent by a block of this site's patients (δ={pol.budget.delta})",
        )
    )
    open_ = []
    for c in charges:
        if c.reservation is None:
            continue
        info = site.ledger.reservation(c.reservation)
        if info.status != "committed":
            open_.append(f"{c.reservation[:8]}…={info.status}")
    checks.append(
        Check(
            "charges_committed",
            len(open_),
            0,
            not open_,
            "every round this site trained in is committed"
            if not open_
            else "not committed: " + ", ".join(open_),
        )
    )
    secret = noise_source in ("os_entropy", "csprng")
    checks.append(
        Check(
            "secret_noise",
            noise_source,
            "os_entropy|csprng",
            secret or pol.release.allow_reproducible_noise,
            "noise and sampling from secret generators",
        )
    )
    auroc = None if evaluation is None else evaluation.get("auroc")
    if pol.utility.min_auroc is not None:
        if auroc is None:
            checks.append(
                Check(
                    "site_auroc",
                    None,
                    pol.utility.min_auroc,
                    False,
                    "the site's test split cannot give an AUROC (one class)",
                )
            )
        else:
            checks.append(
                Check(
                    "site_auroc",
                    round(float(auroc), 4),
                    pol.utility.min_auroc,
                    float(auroc) >= pol.utility.min_auroc,
                    "AUROC on the site's own test split",
                )
            )
    checks += _within_site_gaps(pol, evaluation)
    checks += _site_attribute(pol, site_gaps)
    s = standing(approvals, pol.approvals, author=author)
    checks.append(_approvals(site, s))
    return SiteDecision(
        site=site.name, checks=tuple(checks), approvers=tuple(r.by for r in s.approvals)
    )


def _within_site_gaps(pol: Any, evaluation: Mapping[str, Any] | None) -> list[Check]:
    out = []
    limits = {"auroc": pol.fairness.max_auroc_gap, "fnr": pol.fairness.max_fnr_gap}
    for g in (evaluation or {}).get("gaps") or []:
        limit = limits.get(str(g.get("metric")))
        if limit is None or g.get("attribute") not in pol.fairness.sensitive_attributes:
            continue
        judged = int(g.get("groups_judged") or 0)
        name = f"{g['metric']}_gap.{g['attribute']}"
        if judged < 2:
            out.append(
                Check(
                    name,
                    None,
                    limit,
                    not pol.fairness.require_judgeable,
                    f"{judged} subgroup(s) large enough to judge at this site",
                )
            )
            continue
        gap = float(g["gap"])
        out.append(Check(name, round(gap, 4), limit, gap <= limit, "within the site's test split"))
    return out


def _site_attribute(pol: Any, gaps: Sequence[Mapping[str, Any]]) -> list[Check]:
    out = []
    limits = {"auroc": pol.fairness.max_auroc_gap, "fnr": pol.fairness.max_fnr_gap}
    for g in gaps:
        limit = limits.get(str(g["metric"]))
        if limit is None:
            continue
        name = f"{g['metric']}_gap.site"
        if g.get("gap") is None:
            out.append(
                Check(
                    name,
                    None,
                    limit,
                    not pol.fairness.require_judgeable,
                    f"{g.get('judged', 0)} site(s) could be judged",
                )
            )
            continue
        worst = f"worst: {g['worst']}" + (
            " (the smallest site)" if g.get("worst_is_smallest") else ""
        )
        out.append(
            Check(
                name,
                round(float(g["gap"]), 4),
                limit,
                float(g["gap"]) <= limit,
                f"between sites; {worst}",
            )
        )
    return out


def _approvals(site: OpenSite, s: Any) -> Check:
    required = site.policy.policy.approvals.required
    n = len(s.approvals)
    passed = n >= required and not s.refusals
    why = f"approvals recorded on {site.name}'s ledger"
    if s.refusals:
        why += f"; refused by {', '.join(r.by for r in s.refusals)}"
    return Check("approvals", n, required, passed, why)


def record_decisions(
    sites: Sequence[OpenSite],
    decisions: Sequence[SiteDecision],
    *,
    model: str,
    version: str | None,
    run_id: str | None,
) -> list[SiteDecision]:
    """Append each decision to its site's ledger; the decisions with their entries."""
    by_name = {s.name: s for s in sites}
    out = []
    for d in decisions:
        payload = {
            "model": model,
            "version": version,
            "run_id": run_id,
            "policy_sha256": by_name[d.site].policy.sha256,
            **d.to_dict(),
        }
        payload.pop("ledger_seq", None)
        entry = by_name[d.site].ledger.append(kind=ENTRY_KIND, payload=json_safe(payload))
        out.append(SiteDecision(d.site, d.checks, d.approvers, entry.seq))
    return out


def gate_table(decisions: Sequence[SiteDecision]) -> dict[str, Any]:
    """The gate as JSON: allowed only when every site allows."""
    return {
        "allowed": bool(decisions) and all(d.allowed for d in decisions),
        "sites": [d.to_dict() for d in decisions],
    }
