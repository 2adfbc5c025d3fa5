"""Checks ``dpgov ledger reserve`` makes before it charges anything.

δ against the patients: an (ε, δ) guarantee for each patient is meaningful only when δ is well
below 1/n, n the number of patients of the data the mechanism runs on (with δ ≥ 1/n, releasing
one random patient's record in the clear satisfies (0, δ)-DP). A reservation charges one
DP-SGD run over the training patients of all its blocks together, so n is the size of the
*union* of the blocks' patients (not the smallest block: the run samples from all of them; not
the sum: under group privacy a patient may be in several blocks). The union is counted from the
ledger's membership (history classes of the blocks' domains); a block registered without
members counts its own patients, a lower bound on the union, so the check never passes where the
exact union would fail. It is the gate's ``delta_vs_patients`` check (policy key
``release.delta_below_inverse_patients``), made before the charge instead of at the release: a
policy refusal, exit 1, nothing charged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dpgov.data.test_blocks import TEST_SPLIT, is_evaluation_mechanism
from dpgov.errors import Refused, UsageError

if TYPE_CHECKING:
    from dpgov.ledger import Ledger
    from dpgov.policy import Policy


def union_patients(ledger: Ledger, policy: Policy, dataset: str, blocks: Sequence[str]) -> int:
    """Distinct patients of ``blocks`` of ``dataset`` (a lower bound where a block has no
    members: its own count)."""
    chosen = {(dataset, b) for b in blocks}
    known = {b.block: b.patients for b in ledger.blocks(dataset)}
    members = 0
    legacy: set[str] = set()
    for c in ledger.patient_classes(policy.budget, dataset):
        held = chosen.intersection(c.blocks)
        if not held:
            continue
        if c.legacy:  # the pseudo-class of blocks without members
            legacy.update(b for _, b in held)
        else:
            members += c.count
    return max([members, *(known.get(b, 0) for b in legacy)])


def check_delta_below_inverse_patients(
    ledger: Ledger, policy: Policy, dataset: str, blocks: Sequence[str]
) -> None:
    """Refused (exit 1) when the policy requires δ < 1/n and the budget's δ is not."""
    if not policy.release.delta_below_inverse_patients:
        return
    if not set(blocks) <= {b.block for b in ledger.blocks(dataset)}:
        return  # an unknown block: the reservation itself names it (exit 2)
    n = union_patients(ledger, policy, dataset, blocks)
    delta = policy.budget.delta
    if n > 0 and delta >= 1.0 / n:
        raise Refused(
            f"reservation refused: δ={delta:g} >= 1/{n} patients of dataset {dataset!r}, blocks "
            f"{', '.join(blocks)} (the run's training patients); a patient-level guarantee needs "
            f"δ < 1/{n} (policy release.delta_below_inverse_patients): set a smaller "
            "budget.delta; nothing charged"
        )


def check_not_training_on_test(
    ledger: Ledger, policy: Policy, dataset: str, blocks: Sequence[str], mechanism: object
) -> None:
    """UsageError (exit 2, nothing charged) when a mechanism other than one evaluation release
    (the Gaussian mechanism: DP-SGD with q = 1, T = 1) would be charged to a test block: test
    patients are for evaluation only (:mod:`dpgov.data.test_blocks`)."""
    if is_evaluation_mechanism(mechanism):
        return
    if not set(blocks) <= {b.block for b in ledger.blocks(dataset)}:
        return  # an unknown block: the reservation itself names it (exit 2)
    test = [s.block for s in ledger.budget(policy.budget, dataset, blocks) if s.split == TEST_SPLIT]
    if test:
        raise UsageError(
            f"block {test[0]!r} of dataset {dataset!r} is a test block: only an evaluation "
            "release (sample rate 1, 1 step) may be charged to it, never training"
        )
