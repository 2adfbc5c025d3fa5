"""The warning when calibration lands at a σ that leaves no useful model."""

from __future__ import annotations

from dpgov.training.budget_warning import low_budget_warning

ROWS = [
    {"block": "1995", "remaining": 0.031, "epsilon_limit": 8.0},
    {"block": "1996", "remaining": 5.2, "epsilon_limit": 8.0},
    {"block": "2001", "remaining": 8.0, "epsilon_limit": 8.0},
]


def _w(eps: float, calibrated: bool = True) -> str | None:
    return low_budget_warning(
        calibrated=calibrated,
        epsilon_run=eps,
        target_epsilon=2.0,
        noise_multiplier=92.0,
        blocks=["1995", "1996"],
        budgets=ROWS,
    )


def test_below_a_quarter_of_the_target_warns_naming_the_budget_left() -> None:
    w = _w(0.028)  # the run 14: σ 92, ε 0.028 against a target of 2
    assert w is not None and w.startswith("warning: calibration landed at σ = 92")
    assert "below a quarter of its target 2" in w
    assert "1995 0.031 of 8, 1996 5.2 of 8" in w and "2001" not in w


def test_no_warning_at_a_quarter_or_more_or_without_calibration() -> None:
    assert _w(0.5) is None and _w(1.9) is None
    assert _w(0.028, calibrated=False) is None
