"""Check 3: the ledger's projections (its ``blocks``, ``reservations`` and ``charges`` tables)
against the state rebuilt from the entries alone (:func:`dpgov.report.replay.replay`): every
block's patients and retirement, every reservation's status, mechanism, dataset and blocks."""

from __future__ import annotations

import json

from dpgov.report.findings import Finding, finding
from dpgov.report.ledger_snapshot import LedgerSnapshot
from dpgov.report.replay import Replay


def check_projection(r: Replay, snap: LedgerSnapshot) -> list[Finding]:
    """The ledger's projection tables against the state rebuilt from its entries."""
    return _blocks(r, snap) + _reservations(r, snap)


def _blocks(r: Replay, snap: LedgerSnapshot) -> list[Finding]:
    out: list[Finding] = []
    if snap.blocks is None:
        return out
    for key in sorted(set(snap.blocks) | set(r.blocks)):
        ds, b = key
        proj, rec = snap.blocks.get(key), r.blocks.get(key)
        if rec is None:
            out.append(
                finding(
                    "projection_mismatch",
                    f"block {ds}/{b} is in the blocks table but no entry registered it",
                    dataset=ds,
                    block=b,
                )
            )
        elif proj is None:
            out.append(
                finding(
                    "projection_mismatch",
                    f"block {ds}/{b} registered at "
                    f"entry {rec.seq} is missing from the blocks table",
                    dataset=ds,
                    block=b,
                )
            )
        elif proj.patients != rec.patients or proj.retired != rec.retired:
            out.append(
                finding(
                    "projection_mismatch",
                    f"block {ds}/{b}: the blocks table says "
                    f"{proj.patients} patients, retired={proj.retired}; the entries say "
                    f"{rec.patients}, retired={rec.retired}",
                    dataset=ds,
                    block=b,
                )
            )
    return out


def _reservations(r: Replay, snap: LedgerSnapshot) -> list[Finding]:
    out: list[Finding] = []
    if snap.reservations is None:
        return out
    for rid in sorted(set(snap.reservations) | set(r.charges)):
        proj_r, ch = snap.reservations.get(rid), r.charges.get(rid)
        if ch is None:
            out.append(
                finding(
                    "projection_mismatch",
                    f"reservation {rid} is in the reservations table but no entry made it",
                    reservation=rid,
                )
            )
            continue
        if proj_r is None:
            out.append(
                finding(
                    "projection_mismatch",
                    f"reservation {rid} (entry {ch.seq}) is missing from the reservations table",
                    reservation=rid,
                    seq=ch.seq,
                )
            )
            continue
        diffs = []
        if proj_r.status != ch.status:
            diffs.append(f"status {proj_r.status} (entries: {ch.status})")
        if proj_r.mechanism != ch.mechanism.to_dict():
            diffs.append(
                f"mechanism {json.dumps(proj_r.mechanism, sort_keys=True)} "
                f"(entries: {json.dumps(ch.mechanism.to_dict(), sort_keys=True)})"
            )
        if sorted(proj_r.blocks) != sorted(ch.blocks) or proj_r.dataset != ch.dataset:
            diffs.append(
                f"charges {proj_r.dataset}/{','.join(proj_r.blocks)} (entries: "
                f"{ch.dataset}/{','.join(sorted(ch.blocks))})"
            )
        if diffs:
            out.append(
                finding(
                    "projection_mismatch",
                    f"reservation {rid}: the projection says {'; '.join(diffs)}",
                    reservation=rid,
                    seq=ch.seq,
                )
            )
    return out
