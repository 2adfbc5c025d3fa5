"""What the gate knows about a candidate model: the contract between training/tracking and gate.

Training writes these facts as ``candidate_facts.json`` in the MLflow run of every model
version it registers (and the headline numbers as model-version tags); the gate reads them
back. The gate is a pure function of (policy, facts, ledger facts, approvals).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from dpgov.gate.dp_facts import PrivateEvaluation


class _Facts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubgroupMetric(_Facts):
    """One subgroup's utility (bootstrap interval bounds may be None when not computed)."""

    attribute: str  # e.g. "sex", "age_band"
    group: str  # e.g. "F", "60-69"
    n: int  # patients in the test split
    positives: int
    auroc: float | None  # None when the group holds one class only
    auroc_lo: float | None = None
    auroc_hi: float | None = None
    fnr: float | None = None  # false-negative rate (underdiagnosis)
    fnr_lo: float | None = None
    fnr_hi: float | None = None


class Gap(_Facts):
    """Largest minus smallest subgroup value of one metric over one attribute."""

    attribute: str
    metric: Literal["auroc", "fnr"]
    gap: float
    lo: float | None = None  # bootstrap interval of the gap
    hi: float | None = None
    groups_judged: int  # subgroups that met the minimum size used to compute the gap
    min_group_n: int
    # the rest of the subgroup rule (dpgov.gate.subgroups) and the subgroups judged; None in
    # gaps recorded before they were (no positives threshold; subgroups compared by count)
    min_group_positives: int | None = None
    groups: list[str] | None = None


class ReferenceFacts(_Facts):
    """The non-private reference run on the same data (never promotable)."""

    run_id: str
    auroc: float
    gaps: list[Gap]


class MembershipRow(_Facts):
    """One row of the run's membership-inference attack (dpgov.training.membership_attack):
    non-private figures, overall (attribute and group ``all``) or one judged subgroup."""

    model: Literal["dp", "reference"]
    attribute: str
    group: str
    members: int
    nonmembers: int
    auc: float
    fpr: float  # false positives / non-members at the operating point
    tpr: float
    tpr_lo: float  # Clopper-Pearson interval of the TPR
    tpr_hi: float


class MembershipFacts(_Facts):
    """The run's membership-inference attack (``train.membership_attack``): NON-PRIVATE."""

    attack: str  # "loss-threshold"
    nonmember_split: str  # "validation" or "test"
    min_false_positives: int
    confidence: float
    rows: list[MembershipRow]


class CandidateFacts(_Facts):
    model_name: str
    model_version: str | None = None
    run_id: str
    private: bool  # False for the non-private reference: never promotable
    author: str
    dataset: str
    data_version: str
    blocks: list[str]
    reservation_id: str | None
    ledger_entries: list[int]
    # privacy of this run alone (None for the non-private reference)
    epsilon: float | None
    delta: float | None
    accountant: str | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    max_grad_norm: float | None
    secure_rng: bool
    # where the noise and Poisson masks came from: os_entropy | csprng | seed
    # (dpgov.gate.noise; None: facts written before sources were recorded, judged as seed)
    noise_source: str | None = None
    n_train_patients: int
    # training records a patient may hold (privacy.max_records_per_patient); above 1 the run
    # used patient-level DP-SGD (each patient's summed gradient clipped). None: facts written
    # before it was recorded, which were record-level (one record per patient)
    max_records_per_patient: int | None = None
    # utility on the held-out test split
    auroc: float
    auroc_lo: float | None = None
    auroc_hi: float | None = None
    accuracy: float
    brier: float | None  # None when DP-evaluated (not computable from the histograms)
    # expected calibration error: 10 equal-width bins, or the release's bins when DP-evaluated
    calibration_error: float
    subgroups: list[SubgroupMetric]
    gaps: list[Gap]
    reference: ReferenceFacts | None = None
    policy_sha256: str
    # the DP-evaluated release every test metric above comes from (evaluation.private): the
    # gate, promotion and previews recompute them from it (dpgov.gate.dp_metrics), never
    # drawing noise; None when the test metrics are exact (the statement says so)
    private_evaluation: PrivateEvaluation | None = None
    # the run's membership-inference attack (train.membership_attack): its non-private
    # figures, so the release statement lists the attack as not covered and the audit report
    # shows them; None when none ran
    membership_attack: MembershipFacts | None = None
