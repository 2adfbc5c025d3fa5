"""Shared output helpers: JSON for machines, rich tables for people."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import typer

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
PolicyOption = typer.Option(
    None,
    "--policy",
    help="Policy YAML file (default policies/default.yaml).",
    show_default=False,
)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    """Print ``data`` as JSON when asked, otherwise call ``render`` for people."""
    if as_json:
        typer.echo(json.dumps(_clean(data), indent=2, default=str))
    else:
        render()


def console() -> Any:
    from rich.console import Console

    return Console()


def eps_up(x: float) -> str:
    """Spent ε is rounded up when shown (never understate a spend)."""
    if math.isinf(x):
        return "∞"
    return f"{math.ceil(x * 1000) / 1000:.3f}"


def eps_down(x: float) -> str:
    """Remaining ε is rounded down when shown (never overstate what is left)."""
    if math.isinf(x):
        return "∞"
    return f"{math.floor(max(x, 0.0) * 1000) / 1000:.3f}"
