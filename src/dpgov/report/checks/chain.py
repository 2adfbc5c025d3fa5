"""Check 1: the hash chain over the entry rows as stored (``dpgov ledger verify`` does the
same), with the signatures the chain says it carries (:mod:`dpgov.ledger.chain`): an unsigned
entry after ``signing_enabled`` breaks the chain, key or no key, and every signature whose key
is at hand (``DPGOV_LEDGER_HMAC_KEY``, ``DPGOV_LEDGER_HMAC_OLD_KEYS``) is checked. Also
reported: a key set on a ledger that never enrolled one (``ledger_unsigned``), signatures a
policy requires but that were not checked (``signatures_unchecked``), and every restore from a
backup (``ledger_restored``)."""

from __future__ import annotations

from dpgov.report.checks import count_by, short_hash
from dpgov.report.findings import Finding, finding
from dpgov.report.ledger_snapshot import LedgerSnapshot
from dpgov.report.rows import LedgerSummary


def check_chain(
    snap: LedgerSnapshot, *, require_signatures: bool = False
) -> tuple[list[Finding], LedgerSummary]:
    """The chain's verification as findings, and what the report says of the entries."""
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
    elif v.key_given and v.signatures == "none" and rows:
        out.append(finding("ledger_unsigned", v.signature_note()))
    if require_signatures:
        problem = v.signatures_problem()
        if problem:
            out.append(finding("signatures_unchecked", problem))
    for r in v.restores:
        lost = (
            f"entries {r.backup_seq + 1}..{r.lost_through}, anchored before it, were lost: "
            f"their charges and records no longer count (re-enter what they held)"
            if r.lost
            else "no anchored entry was lost (entries after the newest anchor may have been)"
        )
        out.append(
            finding(
                "ledger_restored",
                f"the ledger was restored from a backup at entry {r.seq} by {r.actor}: the "
                f"backup's head is entry {r.backup_seq} ({short_hash(r.backup_hash)}); {lost}",
                seq=r.seq,
                time=r.time,
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
        signatures_checked=v.key_given and not v.unchecked and v.signatures != "none",
        kinds=count_by(r.kind for r in rows),
    )
    return out, summary
