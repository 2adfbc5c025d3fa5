"""The ``next:`` hint names every check an approval will not pass."""

from __future__ import annotations

from dpgov.gate.next_steps import next_hint, still_blocking


def _d(failing: list[str], allowed: bool = False) -> dict[str, object]:
    return {"model": "m", "version": "3", "allowed": allowed, "failing": failing}


def test_only_approvals_missing_points_to_approve_then_promote() -> None:
    hint = next_hint(_d(["approvals"]))
    assert hint is not None and hint.startswith("next: dpgov approve m 3")
    assert "dpgov promote m 3" in hint and "nothing else blocks it" in hint


def test_every_other_failing_check_is_named_and_approval_is_not_suggested_alone() -> None:
    hint = next_hint(_d(["fnr_gap:age_band", "approvals", "auroc"]))
    assert hint is not None
    assert "still blocked by fnr_gap:age_band, auroc and an approval" in hint
    assert "dpgov approve" not in hint and "--preview --policy FILE" in hint
    assert still_blocking(["refusals", "approvals", "recall"]) == ["recall"]


def test_refused_and_allowed() -> None:
    refused = next_hint(_d(["refusals"]))
    assert refused is not None and "refusal stands" in refused
    assert next_hint(_d([], allowed=True)) == "next: dpgov promote m 3 (every check passes)"
