"""The validation split: training patients held out from DP-SGD for the run's own choices.

Model selection and the decision threshold (``train.threshold: prevalence``) must never use
exact test metrics (issue 17). A governed run therefore holds out ``train.validation_fraction``
of its training patients (default 0.2): keyed per patient like the test split, each by a
function of their own pseudonym alone, u = BLAKE2b(label, seed, pseudonym) read in [0, 1),
u < fraction → validation. The pseudonym is already a keyed hash under the deployment's key
(:mod:`dpgov.data.pseudonym`), so no second key is needed; adding or removing a patient moves
no other patient. DP-SGD trains on the rest. The validation patients stay in the blocks the run
reserves, so they are charged as training (conservatively: the model never saw them); what is
read from them without noise (their positive rate for the threshold) is listed in the privacy
statement as not covered (docs/training.md, "Validation split").
"""

from __future__ import annotations

import hashlib

import numpy as np

from dpgov.training.inputs import Arrays, subset

LABEL = b"dpgov validation split v1\x00"


def validation_mask(patient_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the patients of the validation split (module docstring)."""
    if fraction <= 0:
        return np.zeros(len(patient_ids), dtype=bool)
    prefix = LABEL + f"{int(seed)}\x1f".encode()
    u = np.asarray(
        [
            int.from_bytes(hashlib.blake2b(prefix + str(p).encode(), digest_size=8).digest(), "big")
            / 2.0**64
            for p in patient_ids
        ],
        dtype=np.float64,
    )
    return u < fraction


def split_validation(train: Arrays, fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """(the patients DP-SGD trains on, the validation patients)."""
    mask = validation_mask(train.patient_id, fraction, seed)
    return subset(train, ~mask), subset(train, mask)
