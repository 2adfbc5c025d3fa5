"""The README and docs speak to users (issue 22, item 5): no references to the project's own
issue tracker ("issue 17"), nor to-do markers, which mean nothing to a reader."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
INTERNAL = re.compile(r"\bissues? #?\d+|\bTODO\b|\bFIXME\b|\bXXX\b", re.IGNORECASE)


def test_docs_carry_no_internal_notes() -> None:
    assert len(PAGES) > 5
    found = [
        f"{page.relative_to(REPO)}:{n}: {line.strip()}"
        for page in PAGES
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if INTERNAL.search(line)
    ]
    assert found == [], "\n".join(found)
