"""Check 7: reservations left open. A reservation pending longer than ``stale_hours`` is a
crashed run (it stays charged; close it with ``dpgov ledger abort``). Aborted reservations
are listed: they stay charged too."""

from __future__ import annotations

import math
from datetime import datetime

from dpgov.report.findings import Finding, finding
from dpgov.report.replay import Replay
from dpgov.report.rows import ChargeRow, PendingRow, ReservationLists
from dpgov.report.times import parse_time


def check_pending(
    r: Replay, *, now: datetime, stale_hours: float
) -> tuple[list[Finding], ReservationLists]:
    """Pending reservations older than ``stale_hours`` as findings; pending and aborted ones
    listed."""
    out = []
    pending, aborted = [], []
    for c in r.charges.values():
        if c.status == "aborted":
            aborted.append(ChargeRow.of(c))
        if c.status != "pending":
            continue
        t = parse_time(c.time)
        age = (now - t).total_seconds() / 3600 if t is not None else math.inf
        pending.append(
            PendingRow(**ChargeRow.fields_of(c), age_hours=age, stale=age >= stale_hours)
        )
        if age >= stale_hours:
            out.append(
                finding(
                    "reservation_pending",
                    f"reservation {c.id} (entry {c.seq}, "
                    f"{c.dataset}/{','.join(c.blocks)}) has been pending {age:.1f} h (limit "
                    f"{stale_hours:g} h): a crashed run? It stays charged; close it with "
                    f"`dpgov ledger abort {c.id} --reason ...`",
                    reservation=c.id,
                    seq=c.seq,
                    time=c.time,
                )
            )
    return out, ReservationLists(pending=pending, aborted=aborted)
