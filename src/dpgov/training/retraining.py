"""Retraining: which blocks a scheduled run may use, which to retire, and when to skip.

The rules (pure functions here; ``pipelines/retraining.py`` wires them):

- **Newest data.** Retraining trains on the prepared data as it is now (after ``dvc pull``
  where it is DVC-tracked). With ``require_new_data`` it skips when the newest reservation on
  the dataset already used this data version: without new patients, another run would only
  spend budget again on the same data.
- **Blocks.** Every block of the data that is not retired and whose remaining budget
  (``epsilon_per_block`` minus the enforced ε of its charges: the RDP filter's by default) is
  at least ``min_remaining`` trains; blocks not yet registered bring fresh budget and train too.
- **Retirement.** A registered, active block whose remaining ε is below ``min_remaining`` is
  exhausted: it is retired (``Ledger.retire_block``, with the reason) instead of forcing every
  later run's σ up. ``min_remaining`` defaults to a quarter of ``train.target_epsilon``:
  composition is sublinear (two runs at ε = 2 compose to about 2.9 with PLD), so a block
  with that much left still takes a useful, if noisier, run.
- **Calibration.** σ is then calibrated against what the chosen blocks already spent
  (``Ledger.calibrate`` in the plan step): the run's own ε is at most the target *and* every
  block stays within its limit, so a run on nearly spent blocks is noisier, never over budget.
- **Skipping.** When no block can train (or the plan cannot fit any σ), nothing is reserved and
  a ledger entry of kind ``retraining_skipped`` records why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dpgov.contracts import remaining_down, show_remaining, spent_up

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Entry, Ledger
    from dpgov.training.params import RunParams

SKIP_KIND = "retraining_skipped"


class StatusLike(Protocol):
    """What the rules read of a block's status (``dpgov.ledger.BlockStatus`` fits)."""

    block: str
    retired: bool
    epsilon_spent: float
    epsilon_limit: float

    @property
    def remaining(self) -> float: ...


@dataclass(frozen=True)
class Selection:
    dataset: str
    data_version: str
    train: list[str]
    retire: list[tuple[str, str]] = field(default_factory=list)  # (block, reason)
    already_retired: list[str] = field(default_factory=list)
    skip_reason: str | None = None
    min_remaining: float = 0.0

    @property
    def skip(self) -> bool:
        return self.skip_reason is not None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["retire"] = [{"block": b, "reason": r} for b, r in self.retire]
        return out


def default_min_remaining(target_epsilon: float) -> float:
    """The least remaining ε a block needs to take part: a quarter of one run's target ε."""
    return target_epsilon / 4


def exhausted(status: StatusLike, min_remaining: float) -> str | None:
    """Why an active block should be retired, or None while it can still train."""
    if status.retired or status.remaining >= min_remaining:
        return None
    return (
        f"exhausted: remaining ε {show_remaining(status.remaining)} of "
        f"{status.epsilon_limit:g} is below {min_remaining:g}, the least a retraining run uses"
    )


def select_blocks(
    *,
    dataset: str,
    data_version: str,
    data_blocks: list[str],
    statuses: list[StatusLike],
    min_remaining: float,
    last_trained_version: str | None = None,
    require_new_data: bool = False,
) -> Selection:
    """The blocks of ``data_blocks`` to train on, those to retire, or why to skip."""
    if require_new_data and last_trained_version == data_version:
        return Selection(
            dataset=dataset,
            data_version=data_version,
            train=[],
            skip_reason=(
                f"no new data: the newest run on {dataset!r} already trained on data "
                f"version {data_version}"
            ),
            min_remaining=min_remaining,
        )
    by_block = {s.block: s for s in statuses}
    train: list[str] = []
    retire: list[tuple[str, str]] = []
    retired_before: list[str] = []
    for b in data_blocks:
        status = by_block.get(b)
        if status is None:  # not registered yet: a fresh block
            train.append(b)
        elif status.retired:
            retired_before.append(b)
        elif (why := exhausted(status, min_remaining)) is not None:
            retire.append((b, why))
        else:
            train.append(b)
    reason = None
    if not train:
        parts = []
        if retire:
            parts.append(f"retired now: {', '.join(b for b, _ in retire)}")
        if retired_before:
            parts.append(f"retired before: {', '.join(retired_before)}")
        detail = f" ({'; '.join(parts)})" if parts else ""
        reason = (
            f"no block of {dataset!r} (data version {data_version}) has at least ε "
            f"{min_remaining:g} left{detail}"
        )
    return Selection(
        dataset=dataset,
        data_version=data_version,
        train=train,
        retire=retire,
        already_retired=retired_before,
        skip_reason=reason,
        min_remaining=min_remaining,
    )


def last_trained_version(ledger: Ledger, dataset: str) -> str | None:
    """The data version of the newest reservation on ``dataset`` that spent budget (released
    reservations, in which no step ran, do not count)."""
    for entry in reversed(ledger.entries(kind="reservation")):
        payload = entry.payload
        if payload.get("dataset") != dataset:
            continue
        if ledger.reservation(str(payload["reservation"])).status == "released":
            continue
        version = payload.get("data_version")
        return str(version) if version else None
    return None


def retire(ledger: Ledger, *, dataset: str, retire: list[tuple[str, str]]) -> list[Entry]:
    """Retire each exhausted block with its reason (``Ledger.retire_block``)."""
    return [ledger.retire_block(dataset=dataset, block=b, reason=why) for b, why in retire]


def record_skip(
    ledger: Ledger, selection: Selection, *, reason: str | None = None, **extra: Any
) -> Entry:
    """A ledger entry (kind ``retraining_skipped``) saying why nothing was trained."""
    payload = {
        "dataset": selection.dataset,
        "data_version": selection.data_version,
        "reason": reason or selection.skip_reason or "skipped",
        "retired": [b for b, _ in selection.retire],
        "already_retired": selection.already_retired,
        "min_remaining": selection.min_remaining,
        **extra,
    }
    return ledger.append(kind=SKIP_KIND, payload=payload)


def params_for(params: RunParams, selection: Selection, data: str) -> RunParams:
    """The run's params with the chosen blocks and data folder."""
    train = params.train.model_copy(update={"blocks": list(selection.train), "data": data})
    return params.model_copy(update={"train": train})


def budget_rows(statuses: list[Any]) -> list[dict[str, Any]]:
    """One row per block for a table: spent rounded up, remaining rounded down."""
    return [
        {
            "dataset": s.dataset,
            "block": s.block,
            "patients": s.patients,
            "epsilon_spent": spent_up(s.epsilon_spent),
            "epsilon_limit": s.epsilon_limit,
            "remaining": remaining_down(s.remaining),
            "charges": s.charges,
            "pending": s.pending,
            "state": "retired" if s.retired else "active",
        }
        for s in statuses
    ]
