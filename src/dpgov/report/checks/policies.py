"""The policies in force: every policy the ledger's entries were made under, by the SHA-256
of its file, with when each was first and last used and by how many entries of each kind."""

from __future__ import annotations

from collections.abc import Sequence

from dpgov.report.replay import RawEntry
from dpgov.report.rows import PolicyRow


def policies_in_force(rows: Sequence[RawEntry], current_sha: str) -> list[PolicyRow]:
    """Every policy an entry names, first used first; ``current``: the policy audited with."""
    seen: dict[str, PolicyRow] = {}
    for e in rows:
        p = e.payload
        if p is None or not isinstance(p.get("policy_sha256"), str):
            continue
        sha = p["policy_sha256"]
        row = seen.setdefault(
            sha,
            PolicyRow(
                sha256=sha,
                paths=[],
                first_seen=e.time,
                last_seen=e.time,
                entries={},
                current=sha == current_sha,
            ),
        )
        row.last_seen = e.time
        row.entries[e.kind] = row.entries.get(e.kind, 0) + 1
        path = p.get("policy_path")
        if isinstance(path, str) and path not in row.paths:
            row.paths.append(path)
    return sorted(seen.values(), key=lambda x: x.first_seen)
