"""Which anchors of a shared tracking store are a ledger's own (report.audit.own_anchors)."""

from __future__ import annotations

from dpgov.report.audit import own_anchors
from dpgov.tracking.records import Anchor

A = "sqlite:////sites/dept-1/ledger.db"
B = "sqlite:////sites/dept-2/ledger.db"


def _a(seq: int, ledger: str | None) -> Anchor:
    return Anchor(seq=seq, hash=f"h{seq}", time="", run_id="r", ledger=ledger)


def test_a_federations_sites_read_only_their_own_anchors() -> None:
    anchors = [_a(1, A), _a(1, B), _a(2, A), _a(3, None)]
    assert [(x.seq, x.ledger) for x in own_anchors(anchors, A)] == [(1, A), (2, A), (3, None)]
    assert [(x.seq, x.ledger) for x in own_anchors(anchors, B)] == [(1, B), (3, None)]


def test_a_copied_ledger_keeps_every_anchor_checked() -> None:
    # the ledger and its store copied elsewhere: no anchor names the new path, none is dropped
    anchors = [_a(1, A), _a(2, A)]
    assert own_anchors(anchors, "sqlite:////restored/ledger.db") == anchors
