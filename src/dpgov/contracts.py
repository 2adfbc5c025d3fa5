"""The names and numbers that modules agree on, defined once.

Part of the base (with :mod:`dpgov.errors` and :mod:`dpgov.config`): every layer may import
it, and it imports nothing of dpgov. A tag, an artifact name, a metric key, a tolerance or a
rounding rule that two modules share lives here, so the writer and the reader cannot drift.

- **Tags** (MLflow run and model-version tags) and **artifacts** (files in a run) that
  training writes and the gate, the registry and the audit read.
- **Rounding** (Tumult's rule): spent ε is rounded *up* wherever it is shown, remaining budget
  *down*, so a displayed number never understates a spend or overstates what is left.
- **Tolerance**: one relative slack for comparing an ε with a limit, :data:`EPSILON_TOLERANCE`,
  through :func:`within` / :func:`exceeds` (floating-point noise of the accountants only, far
  below any displayed digit).
- **Strict JSON**: :func:`json_safe` makes NaN, ±inf and numpy scalars standard JSON.
- **What a guarantee does not cover**: :data:`NOT_COVERED`, in every privacy statement.
"""

from __future__ import annotations

import json
import math
from typing import Any

# --------------------------------------------------------------------------- tags

TAG_PREFIX = "dpgov."
TAG_PRIVATE = "dpgov.private"
TAG_STATUS = "dpgov.status"
TAG_DATASET = "dpgov.dataset"
TAG_BLOCKS = "dpgov.blocks"
TAG_DATA_VERSION = "dpgov.data_version"
TAG_POLICY_SHA256 = "dpgov.policy_sha256"
TAG_AUTHOR = "dpgov.author"
TAG_RESERVATION = "dpgov.reservation"
TAG_LEDGER_ENTRIES = "dpgov.ledger_entries"
TAG_COMMIT = "dpgov.commit"
TAG_REFERENCE_RUN = "dpgov.reference_run"
TAG_PRIVATE_RUN = "dpgov.private_run"
TAG_FAILURE = "dpgov.failure"
TAG_RUN_ID = "dpgov.run_id"
TAG_MEMBERSHIP_ATTACK = "dpgov.membership_attack"  # "nonprivate": attack figures logged
TAG_EPSILON = "dpgov.epsilon"
TAG_DELTA = "dpgov.delta"
TAG_SWEEP = "dpgov.sweep"
TAG_SWEEP_TRIAL = "dpgov.sweep_trial"
TAG_PROMOTION = "dpgov.promotion"
TAG_APPROVALS = "dpgov.approvals"
TAG_REFUSALS = "dpgov.refusals"
TAG_REPLACED_BY = "dpgov.replaced_by"
TAG_SWEEP_STOPPED = "dpgov.sweep.stopped"  # why a sweep stopped early (a refusal)
TAG_SWEEP_ROLE = "dpgov.sweep.trial"  # a sweep run's role: "parent", "reference" or the trial

STATUS_CANDIDATE = "candidate"
STATUS_REFERENCE = "reference"
STATUS_SWEEP = "sweep"  # the parent run of a sweep
STATUS_STUDY = "study"  # a sweep's trial: a study, never a release candidate

# --------------------------------------------------------------------------- artifacts

ARTIFACT_CANDIDATE_FACTS = "candidate_facts.json"
ARTIFACT_PRIVACY_STATEMENT = "privacy_statement.json"
ARTIFACT_PRIVACY_STATEMENT_TEXT = "privacy_statement.txt"
ARTIFACT_SUBGROUPS_CSV = "subgroups.csv"
ARTIFACT_SUBGROUPS_JSON = "subgroups.json"
ARTIFACT_MEMBERSHIP_ATTACK = "membership_attack.json"  # non-private attack figures

# --------------------------------------------------------------------------- metrics

METRIC_EPSILON = "epsilon"
METRIC_DELTA = "delta"
METRIC_BLOCK_PREFIX = "epsilon_block."

PARAM_NOISE_MULTIPLIER = "noise_multiplier"  # run parameters a DP run logs
PARAM_ACCOUNTANT = "accountant"


def metric_key(text: str) -> str:
    """A name usable in an MLflow metric key (other characters become ``_``)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(text))


def block_metric_key(block: str) -> str:
    """The metric holding a block's cumulative ε after a run: ``epsilon_block.<block>``."""
    return METRIC_BLOCK_PREFIX + metric_key(block)


# --------------------------------------------------------------------------- rounding

DISPLAY_DIGITS = 3


def spent_up(x: float, digits: int = DISPLAY_DIGITS) -> float:
    """Spent ε rounded up to ``digits`` decimals (infinity stays infinite)."""
    if math.isinf(x) or math.isnan(x):
        return x
    scale = 10**digits
    return math.ceil(x * scale) / scale


def remaining_down(x: float, digits: int = DISPLAY_DIGITS) -> float:
    """Remaining budget rounded down to ``digits`` decimals, never below zero."""
    if math.isinf(x) or math.isnan(x):
        return x
    scale = 10**digits
    return math.floor(max(x, 0.0) * scale) / scale


def show_spent(x: float | None, digits: int = DISPLAY_DIGITS, *, infinity: str = "inf") -> str:
    """Spent ε as text, rounded up (``—`` for None, ``infinity`` for infinity)."""
    if x is None:
        return "—"
    if math.isinf(x):
        return infinity
    return f"{spent_up(x, digits):.{digits}f}"


def show_remaining(x: float | None, digits: int = DISPLAY_DIGITS, *, infinity: str = "inf") -> str:
    """Remaining budget as text, rounded down (``—`` for None, ``infinity`` for infinity)."""
    if x is None:
        return "—"
    if math.isinf(x):
        return infinity
    return f"{remaining_down(x, digits):.{digits}f}"


# --------------------------------------------------------------------------- tolerance

EPSILON_TOLERANCE = 1e-9
"""Relative slack when an ε is compared with a limit (accountant round-off only)."""


def within(value: float, limit: float) -> bool:
    """``value`` ≤ ``limit`` up to :data:`EPSILON_TOLERANCE` (relative)."""
    return value <= limit * (1 + EPSILON_TOLERANCE)


def exceeds(value: float, limit: float) -> bool:
    """``value`` > ``limit`` beyond :data:`EPSILON_TOLERANCE`: the negation of :func:`within`."""
    return not within(value, limit)


def exhausted(remaining: float) -> bool:
    """No budget left worth a run: remaining ε at or below the tolerance."""
    return remaining <= EPSILON_TOLERANCE


# --------------------------------------------------------------------------- JSON


def json_safe(obj: Any) -> Any:
    """Standard JSON values: NaN → null, ±inf → ``"inf"``/``"-inf"``, numpy scalars → Python,
    numpy arrays, tuples and sets → lists, mapping keys → strings; other objects → ``str``."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [json_safe(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars (→ Python) and arrays (→ lists)
    if callable(tolist) and type(obj).__module__ == "numpy":
        return json_safe(tolist())
    return str(obj)


def compact_json(value: Any) -> str:
    """JSON without spaces, for list-valued tags (``["1995","1996"]``)."""
    return json.dumps(value, separators=(",", ":"))


# --------------------------------------------------------------------------- statements

NOT_COVERED: tuple[str, ...] = (
    "the held-out test split (used for evaluation, released as metrics)",
    "the non-private reference model (never promotable)",
    "choices made outside the run (hyperparameters, preprocessing fitted on data)",
    # the split and the blocks are per-patient functions (docs/data.md); these are not
    "what stays data-dependent and is used without noise: the exact numbers of training "
    "patients and block sizes behind the sampling rate q, the subgroup counts of the fairness "
    "checks, the decision threshold (the validation split's positive rate: training "
    "patients held out from DP-SGD, read without noise), and the feature "
    "encoding's training statistics (medians, means, standard deviations)",
)
"""What a dpgov privacy statement's guarantee does not cover, in every statement."""

MEMBERSHIP_NOT_COVERED = (
    "the membership-inference attack (train.membership_attack): the exact losses of training "
    "and validation patients under the DP model and the non-private reference, and the attack "
    "figures computed from them (AUC, TPR, per subgroup), are non-private uses of patient data; "
    "so are any shadow models trained for it"
)
"""Added to a statement's "not covered" list when the run attacked its models."""
