"""A warning when calibration lands at a noise level that leaves no useful model: the run's ε
below a quarter of its target (``train.target_epsilon``) because the blocks it trained on had
little budget left. Nothing is refused (the charge is within every limit); the run says so, in
its output and its summary JSON (``warnings``), naming the budget left."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# below this share of its target, a calibrated run's ε is said to leave no useful model
USEFUL_SHARE = 0.25


def low_budget_warning(
    *,
    calibrated: bool,
    epsilon_run: float,
    target_epsilon: float,
    noise_multiplier: float,
    blocks: Iterable[str],
    budgets: Iterable[Mapping[str, Any]],
) -> str | None:
    """The warning line, or None when the run's ε is at least :data:`USEFUL_SHARE` of its
    target (or σ was not calibrated: the params chose it)."""
    if not calibrated or epsilon_run >= USEFUL_SHARE * target_epsilon:
        return None
    names = set(blocks)
    left = [
        f"{row['block']} {float(row['remaining']):.3g} of {float(row['epsilon_limit']):g}"
        for row in budgets
        if row.get("block") in names
    ]
    return (
        f"warning: calibration landed at σ = {noise_multiplier:.3g}: the run's ε "
        f"{epsilon_run:.3g} is below a quarter of its target {target_epsilon:g}, so the "
        f"model is unlikely to be useful; budget left after this run: "
        f"{', '.join(left) or 'unknown'} (train on blocks with budget left, or on new data)"
    )
