"""The ``next:`` hint printed after a gate decision (a run, the demo): what to do next, naming
every check that will still block promotion after an approval, so a hint never leads to a
promotion that the gate refuses again. A blocked DP-evaluated release whose test blocks are
spent says that a retrain needs fresh test data first (another release on them is refused)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# checks an approver's action changes: an approval (or a withdrawn refusal) can pass them
APPROVER_CHECKS = ("approvals", "refusals")


def still_blocking(failing: Sequence[str]) -> list[str]:
    """The failing checks that no approval can pass (the model or the policy must change)."""
    return [name for name in failing if name not in APPROVER_CHECKS]


def spent_test_blocks(decision: Mapping[str, Any]) -> list[str]:
    """The test blocks of the decision's DP-evaluated release that can afford no further
    release (retired: :mod:`dpgov.gate.dp_checks`); empty for exact-metric decisions."""
    ev = decision.get("evaluation") or {}
    if not ev.get("fresh_test_data_needed"):
        return []
    return [str(b) for b in ev.get("blocks_retired") or []] or ["?"]


def next_hint(decision: Mapping[str, Any]) -> str | None:
    """One line for ``decision`` (the gate's ``to_dict()``); None when nothing is left to do
    (a recall blocks for good: the hint names it like any other check)."""
    model, version = decision["model"], decision["version"]
    failing = [str(n) for n in decision.get("failing") or []]
    if decision.get("allowed"):
        return f"next: dpgov promote {model} {version} (every check passes)"
    blocking = still_blocking(failing)
    if blocking:
        need = " and an approval" if "approvals" in failing else ""
        spent = spent_test_blocks(decision)
        ev = decision.get("evaluation") or {}
        if spent:
            retrain = (
                f"Fresh test data is needed before another DP-evaluated release (test "
                f"block(s) {', '.join(spent)} spent): prepare or ingest new patients, then "
                "retrain"
            )
        elif ev.get("recorded") and isinstance(ev.get("attempt"), int):
            retrain = (
                f"Retrain (its DP-evaluated release on the same test blocks is attempt "
                f"{ev['attempt'] + 1} or later: charged again, judged at a smaller η)"
            )
        else:
            retrain = "Retrain"
        return (
            f"next: an approval will not ship {model} {version}: still blocked by "
            f"{', '.join(blocking)}{need}. {retrain}, or change the policy in force: try one "
            f"with `dpgov gate {model} {version} --preview --policy FILE` (nothing recorded), "
            "then `dpgov policy set FILE --reason TEXT`"
        )
    if "refusals" in failing:
        return (
            f"next: {model} {version} was refused; the refusal stands until the same approver "
            f"approves it (dpgov approve {model} {version}), or train a new candidate"
        )
    return (
        f"next: dpgov approve {model} {version} --by NAME, then dpgov promote {model} {version} "
        f"(or answer the approval flow: dpgov flows approval {model} {version}); nothing else "
        "blocks it"
    )
