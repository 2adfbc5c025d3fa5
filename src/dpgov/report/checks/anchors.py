"""Check 2: anchors (chain heads kept outside the ledger database: in the tracking store,
:mod:`dpgov.tracking.anchor`, and in the anchor file, :mod:`dpgov.ledger.anchoring`) against
the rows: the entry at every anchored seq must still have the anchored hash, and the ledger's
head must not be behind the newest anchor (a cut tail: ``ledger_truncated``). Anchors of
entries that a chained ``restored`` entry declared lost are explained by it (the restore is
its own finding, :mod:`.chain`). Commits after the newest anchor could be cut or rewritten
unnoticed, key or no key: a finding too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dpgov.ledger.anchoring import file_anchor_points, lost_by_restore
from dpgov.ledger.chain import Restore
from dpgov.report.checks import short_hash
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import RawEntry
from dpgov.report.rows import AnchorSummary
from dpgov.tracking.records import Anchor

LISTED = 50  # anchors listed in the report (the newest)


@dataclass(frozen=True)
class FileAnchors:
    """The anchor file's anchors (``DPGOV_LEDGER_ANCHOR_FILE``), as anchor records, and the
    lines that could not be read."""

    anchors: list[Anchor] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_file_anchors(ledger: str | None = None) -> FileAnchors:
    """The configured anchor file's anchors of ``ledger`` (its URL, password hidden); none
    configured: nothing."""
    points, problems = file_anchor_points(ledger=ledger)
    return FileAnchors(
        [Anchor(p.seq, p.hash, p.time, f"anchor file {p.where}") for p in points],
        [p for p in problems if "does not exist" not in p],
    )


def check_anchors(
    rows: Sequence[RawEntry],
    anchors: Sequence[Anchor],
    *,
    restores: Sequence[Restore] = (),
    file_problems: Sequence[str] = (),
) -> tuple[list[Finding], AnchorSummary]:
    """Anchors against the rows. Pure."""
    out: list[Finding] = [finding("anchor_mismatch", f"{p} (edited?)") for p in file_problems]
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
        if lost_by_restore(a.seq, restores) is not None:
            continue  # declared lost by a chained restore
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
                    f"{short_hash(a.hash)} was anchored at {a.time} ({a.run_id}): the ledger was "
                    f"rewritten at or before entry {a.seq}",
                    seq=a.seq,
                    run_id=a.run_id,
                )
            )
        else:
            matched += 1
    unexplained = [a for a in anchors if lost_by_restore(a.seq, restores) is None]
    beyond = [a for a in unexplained if a.seq > head_seq]
    newest = max(anchors, key=lambda a: a.seq) if anchors else None
    if beyond:
        cut = max(beyond, key=lambda a: a.seq)
        out.append(
            finding(
                "ledger_truncated",
                f"the ledger's head is entry {head_seq}, but entry {cut.seq} was anchored at "
                f"{cut.time} ({cut.run_id}): its newest {cut.seq - head_seq} entries are gone "
                f"(a cut tail; a restore would say so in a chained restored entry)",
                seq=cut.seq,
                run_id=cut.run_id,
            )
        )
    covered = min(newest.seq, head_seq) if newest is not None else 0
    commits = [r for r in rows if r.kind == "commit" and r.seq > covered]
    if commits:
        since = f"after the newest anchor (entry {covered})" if covered else "and no anchor"
        out.append(
            finding(
                "unanchored_commits",
                f"{len(commits)} commit(s) {since}, entries {commits[0].seq}..{commits[-1].seq}: "
                f"deleting them would go unnoticed, key or no key (every dpgov command anchors "
                f"what it appends; anchor the head now: dpgov audit --anchor)",
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
        anchors=tuple(sorted(anchors, key=lambda a: a.seq)[-LISTED:]),
    )
    return out, summary
