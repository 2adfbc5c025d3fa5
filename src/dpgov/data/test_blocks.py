"""Test blocks: the held-out test split's patients as blocks of their own in the ledger.

The test split is patient data too (issue 17): every DP-evaluated release of test metrics is
charged to its patients, and they count toward the one per-patient limit
(``budget.epsilon_per_block``). ``data prepare`` and ``ingest`` therefore register, beside each
training block ``B``, one test block named :func:`evaluation_block` (``test-B``) holding the test
patients whose records fall in ``B``, with ``split="test"``, their pseudonyms as members and
the id domain of the data (docs/data.md, "Test blocks"). Planning never trains on a test block
(they are not training blocks of the prepared data), and ``dpgov ledger reserve`` refuses a
training mechanism on one.
"""

from __future__ import annotations

from typing import Any

TEST_SPLIT = "test"
TRAIN_SPLIT = "train"
TEST_PREFIX = "test-"


def evaluation_block(block: str) -> str:
    """The ledger name of the test block beside training block ``block``: ``test-<block>``."""
    return f"{TEST_PREFIX}{block}"


def evaluation_members(test: Any) -> dict[str, list[str]]:
    """Each test block's members: the sorted distinct pseudonyms of the test rows of each
    prepared block, keyed by the test block's name."""
    return {
        evaluation_block(str(block)): sorted(set(ids.tolist()))
        for block, ids in test.groupby("block", sort=True)["patient_id"]
    }


def is_evaluation_mechanism(mechanism: Any) -> bool:
    """A single release of the Gaussian mechanism (DP-SGD with q = 1 and T = 1): what one
    DP-evaluated release is charged as. Anything else trains."""
    return (
        getattr(mechanism, "kind", None) == "dp_sgd"
        and float(getattr(mechanism, "sample_rate", 0.0)) == 1.0
        and int(getattr(mechanism, "steps", 0)) == 1
    )
