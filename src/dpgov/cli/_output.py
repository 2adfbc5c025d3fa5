"""Shared output helpers: JSON for machines, rich tables for people."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import typer

from dpgov.contracts import show_remaining, show_spent
from dpgov.redaction import redact

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
PolicyOption = typer.Option(
    None,
    "--policy",
    help="What-if: judge by this policy YAML instead of the policy in force; nothing is "
    "charged or recorded.",
    show_default=False,
)


def _no_policy(value: str | None) -> None:
    if value is not None:
        from dpgov.errors import UsageError

        raise UsageError(
            "--policy: this command enforces the policy in force on the ledger and takes no "
            "policy file; change the policy with `dpgov policy set FILE --reason TEXT` (see "
            "`dpgov policy show`)"
        )


# On commands that charge, record or release: accepted only to refuse it with one line (exit 2).
NoPolicyOption = typer.Option(
    None, "--policy", hidden=True, callback=_no_policy, expose_value=True, show_default=False
)


def _clean(obj: Any) -> Any:
    """Strict JSON values, with the credentials of any URL redacted (:mod:`dpgov.redaction`)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    """Print ``data`` as JSON when asked, otherwise call ``render`` for people."""
    if as_json:
        typer.echo(json.dumps(_clean(data), indent=2, default=lambda v: redact(str(v))))
    else:
        render()


def console() -> Any:
    from rich.console import Console

    return Console()


def eps_up(x: float) -> str:
    """Spent ε is rounded up when shown (never understate a spend)."""
    return show_spent(x, infinity="∞")


def eps_down(x: float) -> str:
    """Remaining ε is rounded down when shown (never overstate what is left)."""
    return show_remaining(x, infinity="∞")


MAX_ERROR = 1000  # characters of an error line; values inside it are cut to 80 where echoed


def one_line(message: str) -> str:
    """An error as dpgov prints it: one line, credentials redacted
    (:func:`dpgov.redaction.redact`), at most :data:`MAX_ERROR` characters."""
    text = " ".join(redact(message).split())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def redact_logs() -> None:
    """Every log record made in this process has the credentials of its URLs redacted
    (dpgov's own, MLflow's, Prefect's), whichever handler then writes it."""
    import logging

    previous = logging.getLogRecordFactory()
    if getattr(previous, "dpgov_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: its handler reports it as before
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    factory.dpgov_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
