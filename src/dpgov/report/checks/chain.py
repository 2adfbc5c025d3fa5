"""Check 1: the hash chain over the entry rows as stored (``dpgov ledger verify`` does the
same); with ``DPGOV_LEDGER_HMAC_KEY`` set, every entry's signature too."""

from __future__ import annotations

from dpgov.report.checks import count_by
from dpgov.report.findings import Finding, finding
from dpgov.report.ledger_snapshot import LedgerSnapshot
from dpgov.report.rows import LedgerSummary


def check_chain(snap: LedgerSnapshot) -> tuple[list[Finding], LedgerSummary]:
    """The chain's verification as a finding, and what the report says of the entries."""
    v = snap.verification
    rows = snap.rows
    out = []
    if not v.ok:
        bad = next((r for r in rows if r.seq == v.first_bad_seq), None)
        out.append(
            finding(
                "chain_broken",
                f"hash chain broken at entry {v.first_bad_seq}: {v.reason}",
                seq=v.first_bad_seq,
                time=bad.time if bad else None,
            )
        )
    signed = sum(1 for r in rows if r.signature)
    head = rows[-1] if rows else None
    summary = LedgerSummary(
        url=snap.url,
        entries=len(rows),
        head_seq=head.seq if head else 0,
        head_hash=head.hash if head else None,
        first_time=rows[0].time if rows else None,
        last_time=head.time if head else None,
        chain_ok=v.ok,
        first_bad_seq=v.first_bad_seq,
        reason=v.reason,
        hmac_key_set=snap.hmac_key_set,
        signed_entries=signed,
        unsigned_entries=len(rows) - signed,
        signatures_checked=snap.hmac_key_set,
        kinds=count_by(r.kind for r in rows),
    )
    return out, summary
