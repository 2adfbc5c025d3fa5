"""The record of one DP-evaluated release: noisy per-class score histograms of the test split.

Training draws the noise once (:func:`dpgov.training.dp_evaluation.release`) and records a
:class:`PrivateEvaluation` in the candidate facts; the gate, promotion and previews recompute
every metric from it (:func:`dpgov.gate.dp_metrics.dp_metrics`) and never draw noise again. A
new draw is a new release, and a new charge. The mechanism, its sensitivity and the intervals
are described in docs/evaluation.md.

Layout of the histograms: for each model in ``models``, each label (0, 1), one histogram over
all test patients (``attribute`` and ``group`` None) and one per subgroup of each attribute in
``attributes``. Every histogram has ``len(edges) - 1`` counts; bin ``b`` holds the scores in
``[edges[b], edges[b + 1])`` (the last bin also holds 1.0). The decision threshold is one of
the edges, so the bins at and above it are exactly the predicted positives.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

MECHANISM_GAUSSIAN_HISTOGRAMS: Literal["gaussian_histograms"] = "gaussian_histograms"


class _Facts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoisyHistogram(_Facts):
    """One released histogram: the counts of one class of one model's scores, over all test
    patients (``attribute`` None) or over one subgroup, each count plus N(0, σ²) noise."""

    model: str
    attribute: str | None
    group: str | None
    label: int  # 0 or 1
    counts: list[float]


class PrivateEvaluation(_Facts):
    """One DP-evaluated release (see the module docstring).

    ``sensitivity`` is the L2 sensitivity of all counts together under adding or removing one
    test patient, ``sqrt(len(models) · (1 + len(attributes)))``; ``sigma`` the noise standard
    deviation of every count; ``noise_multiplier`` = sigma / sensitivity, the Gaussian
    mechanism the ledger charges (as DP-SGD with q = 1, T = 1); ``epsilon`` its ε at ``delta``
    (analytic Gaussian). ``attempt`` counts the releases on the same test blocks (1 for the
    first), which sets the share of η this release may use (:func:`dpgov.gate.dp_metrics.
    eta_per_check`). ``noise_source``: ``os_entropy`` (fresh bits from the OS, kept nowhere) or
    ``seed`` (tests and benchmarks only).
    """

    mechanism: Literal["gaussian_histograms"] = MECHANISM_GAUSSIAN_HISTOGRAMS
    edges: list[float]
    threshold: float
    sigma: float
    sensitivity: float
    noise_multiplier: float
    epsilon: float
    delta: float
    models: list[str]
    attributes: list[str]
    histograms: list[NoisyHistogram]
    attempt: int
    test_blocks: list[str]
    reservation_id: str | None
    noise_source: str
    drawn_at: str

    @property
    def bins(self) -> int:
        return len(self.edges) - 1

    def histogram(
        self, model: str, label: int, attribute: str | None = None, group: str | None = None
    ) -> list[float]:
        """The noisy counts of one class of ``model`` over all patients or one subgroup."""
        for h in self.histograms:
            if (h.model, h.label, h.attribute, h.group) == (model, label, attribute, group):
                return h.counts
        where = "all patients" if attribute is None else f"{attribute}={group}"
        raise KeyError(f"no histogram of model {model!r}, label {label}, {where}")

    def groups(self, attribute: str) -> list[str]:
        """The subgroups of ``attribute`` in the release, in recorded order."""
        seen: list[str] = []
        for h in self.histograms:
            if h.attribute == attribute and h.group is not None and h.group not in seen:
                seen.append(h.group)
        return seen
