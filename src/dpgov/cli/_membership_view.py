"""The run's membership-inference attack (``train.membership_attack``) at 80 columns."""

from __future__ import annotations

from typing import Any

from dpgov.cli._output import table


def membership_table(m: dict[str, Any]) -> Any:
    """One row per model and judged subgroup: members / non-members, AUC, the FPR of the
    operating point (at least ``min_false_positives`` expected false positives) and the TPR
    there with its Clopper–Pearson interval."""
    t = table(
        title=f"Membership inference ({m['attack']} attack; NON-PRIVATE figures)",
        caption=(
            f"members: training patients; non-members: the {m['nonmember_split']} split; "
            f"TPR at the FPR that lets {m['min_false_positives']} non-members through, "
            f"[{m['confidence']:.0%} Clopper-Pearson]"
        ),
    )
    t.add_column("model", overflow="fold")
    t.add_column("subgroup", overflow="fold")
    t.add_column("mem/non", justify="right", no_wrap=True)
    t.add_column("AUC", justify="right", no_wrap=True)
    t.add_column("FPR", justify="right", no_wrap=True)
    t.add_column("TPR [CI]", no_wrap=True)
    for model in m["models"]:
        for r in model["rows"]:
            where = "all" if r["attribute"] == "all" else f"{r['attribute']}={r['group']}"
            t.add_row(
                model["model"],
                where,
                f"{r['members']}/{r['nonmembers']}",
                f"{r['auc']:.3f}",
                f"{r['fpr']:.3f}",
                f"{r['tpr']:.3f} [{r['tpr_lo']:.3f}, {r['tpr_hi']:.3f}]",
            )
    return t
