"""Check 2: anchors (chain heads kept in the tracking store, :mod:`dpgov.tracking.anchor`)
against the rows: the entry at every anchored seq must still have the anchored hash, and the
ledger's head must not be behind the newest anchor. Commits after the newest anchor, without
the HMAC key, could be rewritten unnoticed: a finding too."""

from __future__ import annotations

from collections.abc import Sequence

from dpgov.report.checks import short_hash
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import RawEntry
from dpgov.report.rows import AnchorSummary
from dpgov.tracking.records import Anchor

LISTED = 50  # anchors listed in the report (the newest)


def check_anchors(
    rows: Sequence[RawEntry], anchors: Sequence[Anchor], *, hmac_key_set: bool
) -> tuple[list[Finding], AnchorSummary]:
    """Anchors against the rows. Pure."""
    out: list[Finding] = []
    by_seq = {r.seq: r for r in rows}
    head_seq = max(by_seq) if by_seq else 0
    matched = 0
    for a in anchors:
        if a.deleted:
            out.append(
                finding(
                    "anchor_deleted",
                    f"anchor of entry {a.seq} (run {a.run_id}, {a.time}) was "
                    f"deleted in the tracking store: still checked, but someone hid it",
                    seq=a.seq,
                    run_id=a.run_id,
                )
            )
        if a.seq > head_seq:
            continue  # reported once below as a truncation
        row = by_seq.get(a.seq)
        if row is None:
            out.append(
                finding(
                    "anchor_mismatch",
                    f"entry {a.seq}, anchored at {a.time}, is missing from the ledger (deleted)",
                    seq=a.seq,
                    run_id=a.run_id,
                )
            )
        elif row.hash != a.hash:
            out.append(
                finding(
                    "anchor_mismatch",
                    f"entry {a.seq} now has hash {short_hash(row.hash)} but "
                    f"{short_hash(a.hash)} was anchored at {a.time}: the ledger was rewritten "
                    f"at or before entry {a.seq}",
                    seq=a.seq,
                    run_id=a.run_id,
                )
            )
        else:
            matched += 1
    newest = max(anchors, key=lambda a: a.seq) if anchors else None
    if newest is not None and newest.seq > head_seq:
        out.append(
            finding(
                "ledger_truncated",
                f"the ledger's head is entry {head_seq}, but entry "
                f"{newest.seq} was anchored at {newest.time}: its newest "
                f"{newest.seq - head_seq} entries are gone",
                seq=newest.seq,
                run_id=newest.run_id,
            )
        )
    covered = newest.seq if newest is not None else 0
    commits = [r for r in rows if r.kind == "commit" and r.seq > covered]
    if commits and not hmac_key_set:
        since = f"after the newest anchor (entry {covered})" if covered else "and no anchor"
        out.append(
            finding(
                "unanchored_commits",
                f"{len(commits)} commit(s) {since}, entries "
                f"{commits[0].seq}..{commits[-1].seq}, and no HMAC key: a rewrite of those entries "
                f"would go unnoticed (anchor the head: dpgov audit --anchor)",
                seq=commits[0].seq,
            )
        )
    summary = AnchorSummary(
        checked=True,
        count=len(anchors),
        matched=matched,
        newest_seq=newest.seq if newest else None,
        newest_time=newest.time if newest else None,
        unanchored_entries=max(0, head_seq - covered),
        anchors=tuple(anchors[-LISTED:]),
    )
    return out, summary
