"""Times as the audit reads them: ISO 8601 text, from the ledger's entries and MLflow."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time as an aware datetime (naive ones are UTC); None when unreadable."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
