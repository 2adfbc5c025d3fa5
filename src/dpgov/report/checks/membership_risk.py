"""The membership-inference attack a released model's run recorded (``train.membership_attack``;
the candidate facts' ``membership_attack``, bound to the run in the ledger), in the words of
the audit report's privacy statement.

The figures are non-private (exact losses of identified patients) and come from the run, not
the ledger; the statement lists the attack under "not covered". Per model (the DP model and
the non-private reference): AUC and TPR at the operating point's FPR with its
Clopper–Pearson interval, overall, and the DP model's most exposed judged subgroup: the
largest TPR − FPR (the attack's advantage over guessing at that point).
"""

from __future__ import annotations

from typing import Any

NAMES = {"dp": "DP model", "reference": "non-private reference"}


def _figures(r: dict[str, Any]) -> str:
    return (
        f"AUC {r['auc']:.3f}, TPR {r['tpr']:.3f} [{r['tpr_lo']:.3f}, {r['tpr_hi']:.3f}] at FPR "
        f"{r['fpr']:.3f}"
    )


def most_exposed(rows: list[dict[str, Any]], model: str = "dp") -> dict[str, Any] | None:
    """The judged subgroup of ``model`` with the largest TPR − FPR (None without one)."""
    groups = [r for r in rows if r["model"] == model and r["attribute"] != "all"]
    return max(groups, key=lambda r: r["tpr"] - r["fpr"], default=None)


def membership_text(m: dict[str, Any] | None) -> str:
    """The statement's membership-inference sentence, on a line of its own (a leading newline,
    as the statement's other added lines; "" when the run recorded no attack)."""
    if not m:
        return ""
    rows = list(m.get("rows") or [])
    overall = [r for r in rows if r["attribute"] == "all"]
    parts = [f"{NAMES.get(r['model'], r['model'])} {_figures(r)}" for r in overall]
    text = (
        f"\nMembership inference ({m['attack']} attack, NON-PRIVATE figures; members: training "
        f"patients, non-members: the {m['nonmember_split']} split; "
        f"{m['confidence']:.0%} Clopper-Pearson intervals at the FPR that lets "
        f"{m['min_false_positives']} non-members through): " + "; ".join(parts) + "."
    )
    worst = most_exposed(rows)
    if worst is not None:
        text += (
            f" The DP model's most exposed judged subgroup: {worst['attribute']}="
            f"{worst['group']} ({worst['members']} members, {worst['nonmembers']} non-members; "
            f"{_figures(worst)})."
        )
    return text
