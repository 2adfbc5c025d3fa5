"""Shared output helpers: JSON for machines, rich tables for people."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
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


def prose(text: str) -> None:
    """A line of prose for people, wrapped at the terminal's width (80 when piped); printed
    as written (no markup, no highlighting)."""
    console().print(text, markup=False, highlight=False, emoji=False)


def table(title: str | None = None, caption: str | None = None, **kwargs: Any) -> Any:
    """A rich table that reads at 80 columns (the width of piped output): no vertical rules,
    one space between columns, a rule under the header, title and caption on the left.
    Give key columns (names, ε figures) ``no_wrap=True`` so that narrower columns wrap first."""
    from rich import box
    from rich.table import Table

    return Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0),
        title_justify="left",
        caption_justify="left",
        **kwargs,
    )


def resolve_prefix(given: str, ids: Iterable[str], *, what: str, option: str) -> str:
    """The one id of ``ids`` that ``given`` is, or is the start of (ids are printed short);
    else UsageError (exit 2): one line naming the unknown prefix, or a few candidates."""
    from dpgov.errors import UsageError

    pool = sorted(set(ids))
    if given in pool:
        return given
    hits = [i for i in pool if i.startswith(given)] if given else []
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise UsageError(f"unknown {what} {given!r} ({option}: no {what} id is or starts with it)")
    shown = ", ".join(hits[:MAX_CANDIDATES]) + (
        f" and {len(hits) - MAX_CANDIDATES} more" if len(hits) > MAX_CANDIDATES else ""
    )
    raise UsageError(
        f"{option} {given!r} is the start of {len(hits)} {what} ids ({shown}): give more of it"
    )


MAX_CANDIDATES = 4  # ids an ambiguous prefix names


def hidden_alias(help_name: str, old: str) -> Any:
    """An option's old spelling, still accepted but not shown (docs/INTERFACES.md, "Option
    names"); merge it with :func:`either`."""
    return typer.Option(None, old, hidden=True, help=f"Old spelling of {help_name}.")


def either(value: Any, old_value: Any, *, name: str, old: str) -> Any:
    """The value given by the option's name or by its old spelling (both: one line, exit 2)."""
    if old_value is None:
        return value
    if value is not None and value != old_value:
        from dpgov.errors import UsageError

        raise UsageError(f"{name} and {old} (its old spelling) differ: give one")
    return old_value


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
