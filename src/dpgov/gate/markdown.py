"""A gate decision as Markdown (for orchestration artifacts and reports): one row per check.

Works on ``Decision.to_dict()`` so callers can pass what they stored or received as JSON.
"""

from __future__ import annotations

import math
from typing import Any

from dpgov.contracts import show_spent


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        if name == "release_epsilon" or name.startswith("block_budget"):
            return show_spent(value)  # spent ε: rounded up
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def decision_markdown(
    decision: dict[str, Any],
    *,
    policy_path: str | None = None,
    ledger_seq: int | None = None,
) -> str:
    """``# gate: MODEL version V — ALLOWED|BLOCKED``, the failing checks, then every check."""
    allowed = bool(decision.get("allowed"))
    verdict = "ALLOWED" if allowed else "BLOCKED"
    lines = [f"# gate: {decision.get('model')} version {decision.get('version')} — {verdict}", ""]
    sha = str(decision.get("policy_sha256") or "")[:12]
    where = f"policy `{policy_path}` " if policy_path else "policy "
    lines.append(
        f"{where}(sha256 `{sha}…`)"
        + (f"; recorded as ledger entry {ledger_seq}" if ledger_seq is not None else "")
    )
    approvers = ", ".join(decision.get("approvers") or []) or "none"
    refusers = ", ".join(decision.get("refusers") or [])
    lines.append(
        f"approvals: {approvers}" + (f"; refusals standing: {refusers}" if refusers else "")
    )
    lines.append("")
    checks = decision.get("checks") or []
    failing = [c for c in checks if not c.get("passed")]
    if failing:
        lines.append(f"**{len(failing)} failing check(s):**")
        lines.append("")
        lines += [f"- `{c['name']}`: {_cell('', c.get('reason'))}" for c in failing]
        lines.append("")
    ev = decision.get("evaluation")
    if ev and ev.get("recorded"):
        lines.append(
            f"DP-evaluated release: attempt {ev.get('attempt')}, "
            f"ε = {_cell('', ev.get('epsilon'))} at δ = {_cell('', ev.get('delta'))} "
            "on test block(s) "
            f"{', '.join(ev.get('test_blocks') or []) or 'none'}; bounds judged at η = "
            f"{_cell('', ev.get('eta_check'))} each ({ev.get('bounds')} bounds, η = "
            f"{_cell('', ev.get('eta'))} in all); noise: the judged figure's standard deviation "
            "from the release's noise alone"
            + (
                "; fresh test data is needed for another release"
                if ev.get("fresh_test_data_needed")
                else ""
            )
        )
        lines.append("")
    elif ev:
        lines.append("evaluation.private is true but no DP-evaluated release is recorded")
        lines.append("")
    noisy = any(c.get("noise_scale") is not None for c in checks)
    if noisy:
        lines.append("| check | observed | limit | noise | result | reason |")
        lines.append("|---|---:|---:|---:|---|---|")
    else:
        lines.append("| check | observed | limit | result | reason |")
        lines.append("|---|---:|---:|---|---|")
    for c in checks:
        name = str(c.get("name"))
        scale = c.get("noise_scale")
        noise = (f"±{scale:.2g} | " if scale is not None else "— | ") if noisy else ""
        lines.append(
            f"| `{name}` | {_cell(name, c.get('observed'))} | {_cell(name, c.get('limit'))} | "
            f"{noise}{'pass' if c.get('passed') else '**FAIL**'} | {_cell('', c.get('reason'))} |"
        )
    return "\n".join(lines) + "\n"
