"""One DP-evaluated release of the test split: Gaussian noise on per-class score histograms.

The mechanism (docs/evaluation.md): the scores of every model evaluated are binned on the
release's edges (``bins`` equal-width bins of [0, 1] plus the decision threshold); for each
model and class the release counts the test patients per bin, over all patients and per
subgroup of each sensitive attribute, and adds N(0, σ²) to every count. Adding or removing one
test patient (one record per patient) changes, per model, one count of the overall histogram
and one count per attribute, each by 1: the L2 sensitivity of the whole release is
Δ = sqrt(models · (1 + attributes)). It is the Gaussian mechanism with noise multiplier
z = σ/Δ, whose exact privacy profile is the analytic Gaussian's (Balle & Wang 2018, Thm. 8):

    δ(ε) = Φ(1/(2z) − ε z) − e^ε Φ(−1/(2z) − ε z)

and the ledger charges it as DP-SGD with q = 1, T = 1 and noise multiplier z
(:func:`evaluation_mechanism`), whose PLD is the same curve.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dpgov.accounting import DpSgdMechanism
from dpgov.errors import UsageError
from dpgov.gate.dp_facts import NoisyHistogram, PrivateEvaluation
from dpgov.gate.noise import NOISE_OS_ENTROPY, NOISE_SEED

_Z_RANGE = (1e-4, 1e6)  # noise multipliers searched (ε up to ~5e7 and down to ~1e-6)


def _log_ndtr(x: float) -> float:
    from scipy.special import log_ndtr

    return float(log_ndtr(x))


def gaussian_delta(epsilon: float, noise_multiplier: float) -> float:
    """The exact δ(ε) of the Gaussian mechanism with noise multiplier z (sensitivity 1, std
    z): Φ(1/(2z) − εz) − e^ε Φ(−1/(2z) − εz) (Balle & Wang 2018, Theorem 8)."""
    mu = 1.0 / noise_multiplier
    a = mu / 2 - epsilon / mu
    b = -mu / 2 - epsilon / mu
    first = math.exp(_log_ndtr(a))
    second = math.exp(epsilon + _log_ndtr(b))
    return max(0.0, first - second)


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """The smallest ε with δ(ε) ≤ ``delta`` for the Gaussian mechanism (bisection: δ(ε)
    falls as ε grows). Rounded up: the value returned always satisfies δ(ε) ≤ delta."""
    _check_delta(delta)
    if gaussian_delta(0.0, noise_multiplier) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, noise_multiplier) > delta:
        lo, hi = hi, hi * 2
        if hi > 1e9:
            raise UsageError(f"noise multiplier {noise_multiplier:g} gives no finite ε at δ")
    for _ in range(200):
        mid = (lo + hi) / 2
        if gaussian_delta(mid, noise_multiplier) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(hi, 1e-12):
            break
    return hi


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise UsageError(f"delta must be a number, found {delta!r}")
    if not math.isfinite(delta) or not 0 < delta < 1:
        raise UsageError(f"delta must be in (0, 1), found {delta!r}")


def calibrate_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest noise std σ (to a relative 1e-10, rounded up) for which the Gaussian
    mechanism of L2 ``sensitivity`` is (``epsilon``, ``delta``)-DP, from the analytic
    Gaussian's exact privacy profile (Balle & Wang 2018): δ(ε) at fixed ε falls as the noise
    multiplier z = σ/Δ grows, so the smallest feasible z is found by bisection."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise UsageError(f"evaluation epsilon must be a number, found {epsilon!r}")
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise UsageError(f"evaluation epsilon must be > 0 and finite, found {epsilon!r}")
    _check_delta(delta)
    if not math.isfinite(sensitivity) or sensitivity <= 0:
        raise UsageError(f"sensitivity must be > 0 and finite, found {sensitivity!r}")
    lo, hi = _Z_RANGE
    if gaussian_delta(epsilon, hi) > delta:
        raise UsageError(
            f"no noise multiplier up to {hi:g} makes the release ({epsilon:g}, {delta:g})-DP"
        )
    if gaussian_delta(epsilon, lo) <= delta:
        return lo * sensitivity
    for _ in range(300):  # bisection on log z
        mid = math.sqrt(lo * hi)
        if gaussian_delta(epsilon, mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1 <= 1e-10:
            break
    return hi * sensitivity


def release_edges(bins: int, threshold: float) -> list[float]:
    """``bins`` equal-width edges of [0, 1] plus ``threshold`` as an extra edge (unless it is
    one already), so that the bins at and above the threshold are the predicted positives."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise UsageError(f"evaluation bins must be an integer >= 1, found {bins!r}")
    if not math.isfinite(threshold) or not 0 < threshold < 1:
        raise UsageError(f"the decision threshold must be in (0, 1), found {threshold!r}")
    edges = [b / bins for b in range(bins + 1)]
    if all(abs(e - threshold) > 1e-12 for e in edges):
        edges.append(float(threshold))
    else:  # the threshold is an equal-width edge: use its exact value
        edges = [float(threshold) if abs(e - threshold) <= 1e-12 else e for e in edges]
    return sorted(edges)


def bin_index(scores: Any, edges: Sequence[float]) -> Any:
    """Bin of each score: b with edges[b] ≤ s < edges[b + 1]; 1.0 in the last bin; scores
    outside [0, 1] are clipped into it."""
    import numpy as np

    s = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    idx = np.searchsorted(np.asarray(edges, dtype=float), s, side="right") - 1
    return np.clip(idx, 0, len(edges) - 2)


def _group_names(sensitive: Any, attribute: str, groups: Mapping[str, Sequence[str]] | None) -> Any:
    import pandas as pd

    column = sensitive[attribute]
    values = column.astype(str).to_numpy()
    if groups is not None and attribute in groups:
        names = [str(g) for g in groups[attribute]]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UsageError(
                f"sensitive attribute {attribute!r} has values {unknown[:5]} outside its "
                f"declared subgroups {names[:10]}"
            )
    elif isinstance(column.dtype, pd.CategoricalDtype):
        names = [str(c) for c in column.cat.categories]
        if column.isna().any():
            names.append("nan")
    else:
        names = sorted(set(values))
    return values, names


def count_histograms(
    y: Any,
    scores_by_model: Mapping[str, Any],
    sensitive: Any,
    *,
    edges: Sequence[float],
    groups: Mapping[str, Sequence[str]] | None = None,
) -> list[NoisyHistogram]:
    """The exact histograms a release adds noise to (never released or logged as they are):
    per model, per label, over all patients and per subgroup of each attribute of
    ``sensitive`` (values compared as strings, like :func:`dpgov.training.evaluate.evaluate`).
    Subgroups: ``groups[attribute]`` when given (the public list, so the release does not
    reveal which groups occur), else the column's categories, else the values present."""
    import numpy as np

    labels = np.asarray(y).astype(int)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise UsageError("test labels must be a 1-D array of 0/1")
    n_bins = len(edges) - 1
    attributes = [str(a) for a in sensitive.columns]
    if len(sensitive) != labels.size:
        raise UsageError(f"{len(sensitive)} sensitive rows for {labels.size} test labels")
    columns = {a: _group_names(sensitive, a, groups) for a in attributes}
    out: list[NoisyHistogram] = []
    for model, scores in scores_by_model.items():
        s = np.asarray(scores, dtype=float)
        if s.shape != labels.shape:
            raise UsageError(f"model {model!r}: {s.shape} scores for {labels.shape} labels")
        if not np.isfinite(s).all():
            raise UsageError(f"model {model!r}: scores must be finite")
        idx = bin_index(s, edges)
        for label in (0, 1):
            mask = labels == label
            counts = np.bincount(idx[mask], minlength=n_bins)
            out.append(
                NoisyHistogram(
                    model=model,
                    attribute=None,
                    group=None,
                    label=label,
                    counts=[float(c) for c in counts],
                )
            )
            for attribute in attributes:
                values, names = columns[attribute]
                for g in names:
                    sub = mask & (values == g)
                    c = np.bincount(idx[sub], minlength=n_bins)
                    out.append(
                        NoisyHistogram(
                            model=model,
                            attribute=attribute,
                            group=g,
                            label=label,
                            counts=[float(x) for x in c],
                        )
                    )
    return out


def sensitivity(models: int, attributes: int) -> float:
    """L2 sensitivity of a release: one patient changes 1 + attributes counts per model."""
    return math.sqrt(models * (1 + attributes))


def release(
    y: Any,
    scores_by_model: Mapping[str, Any],
    sensitive: Any,
    *,
    threshold: float,
    epsilon: float,
    delta: float,
    bins: int,
    attempt: int,
    test_blocks: Sequence[str],
    reservation_id: str | None,
    groups: Mapping[str, Sequence[str]] | None = None,
    generator: Any = None,
) -> PrivateEvaluation:
    """Draw one DP-evaluated release (module docstring): σ calibrated to (``epsilon``,
    ``delta``) for the release's sensitivity, noise from a numpy generator seeded with 128
    fresh bits from :mod:`secrets` (kept nowhere; ``noise_source`` ``os_entropy``). Tests and
    benchmarks may pass their own ``generator`` (``noise_source`` ``seed``: refused by the
    gate unless reproducible noise is allowed)."""
    import numpy as np

    if not scores_by_model:
        raise UsageError("a release needs the scores of at least one model")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise UsageError(f"attempt must be an integer >= 1, found {attempt!r}")
    edges = release_edges(bins, threshold)
    exact = count_histograms(y, scores_by_model, sensitive, edges=edges, groups=groups)
    models = [str(m) for m in scores_by_model]
    attributes = [str(a) for a in sensitive.columns]
    delta_l2 = sensitivity(len(models), len(attributes))
    sigma = calibrate_sigma(epsilon, delta, delta_l2)
    z = sigma / delta_l2
    if generator is None:
        rng = np.random.default_rng(secrets.randbits(128))
        source = NOISE_OS_ENTROPY
    else:
        rng, source = generator, NOISE_SEED
    noisy = [
        h.model_copy(
            update={
                "counts": [
                    float(c)
                    for c in np.asarray(h.counts) + rng.normal(0.0, sigma, size=len(h.counts))
                ]
            }
        )
        for h in exact
    ]
    del rng
    return PrivateEvaluation(
        edges=edges,
        threshold=float(threshold),
        sigma=sigma,
        sensitivity=delta_l2,
        noise_multiplier=z,
        epsilon=gaussian_epsilon(z, delta),
        delta=float(delta),
        models=models,
        attributes=attributes,
        histograms=noisy,
        attempt=attempt,
        test_blocks=[str(b) for b in test_blocks],
        reservation_id=reservation_id,
        noise_source=source,
        drawn_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def evaluation_mechanism(pe: PrivateEvaluation) -> DpSgdMechanism:
    """What the ledger charges for ``pe``: the Gaussian mechanism with its noise multiplier,
    as DP-SGD with one step at sample rate 1 (the same privacy loss distribution)."""
    return DpSgdMechanism(noise_multiplier=pe.noise_multiplier, sample_rate=1.0, steps=1)
