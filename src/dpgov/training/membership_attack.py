"""Membership-inference risk per subgroup: a loss-threshold attack on the DP model and the
non-private reference (docs/empirical_audit.md, "Membership inference per subgroup").

The attack (Yeom et al., CSF 2018; the "global threshold" baseline of Carlini et al., S&P 2022)
scores each patient by the negative of the model's cross-entropy loss on their record: a
model that memorised its training patients gives them lower losses than patients of the same
population it never saw. Members are the patients DP-SGD (and the reference) trained on;
non-members are the run's validation split (training patients held out from DP-SGD, the same
population and the same blocks), or the test split when the run has none.

Per row (overall, and one per judged subgroup: at least ``min_group_n`` members and
non-members, and at least ``min_false_positives`` non-members):

- **AUC** of the scores, members against non-members (0.5: no better than a coin);
- **TPR at the lowest FPR with at least ``min_false_positives`` expected false positives**:
  the threshold lets through exactly the ``k = min_false_positives`` highest-scoring
  non-members (fewer with ties), so the FPR is ``k / n_nonmembers`` (about 1 % overall and
  10 % in a subgroup of 100 here) and is not a fluke of one or two patients. TPR and FPR carry
  Clopper–Pearson (exact binomial) intervals, from :func:`scipy.stats.binomtest`; the TPR's is
  conditional on the threshold the non-members chose.

Offline LiRA (:func:`lira_offline_scores`, the offline variant of Carlini et al. 2022)
calibrates each patient's confidence against shadow models that did not train on them; dpgov
runs it in the benchmark only (benchmarks/bench_membership.py), where the shadow models'
time is measured.

These figures are **non-private**: exact losses of identified patients, released without
noise. A run lists them (and any shadow model) under "not covered" in its privacy statement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.errors import UsageError
from dpgov.gate.subgroups import rule_of
from dpgov.training.evaluate import _safe

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.training.inputs import Arrays

OVERALL = "all"
"""The attribute and group of the overall row."""

MIN_FALSE_POSITIVES = 10
"""Expected false positives at the operating point: the FPR is k / n_nonmembers."""

CONFIDENCE = 0.95
METRIC_PREFIX = "nonprivate.mia"
"""MLflow metric keys: ``nonprivate.mia.<model>.<attribute>.<group>.<figure>``."""

LOSS_ATTACK = "loss-threshold"
LIRA_OFFLINE = "lira-offline"


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial proportion k / n
    (``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``)."""
    if n < 1 or not 0 <= k <= n:
        raise UsageError(f"clopper_pearson: need 0 <= k <= n and n >= 1, found k={k}, n={n}")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def example_losses(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example binary cross-entropy log(1 + exp(−s·z)), s = ±1 the label's sign, from
    logits ``z`` (from logits, not probabilities: a float32 sigmoid saturates at 1 and would
    tie every confident example at the top of the ranking)."""
    z = np.asarray(logits, dtype=np.float64)
    sign = np.where(np.asarray(y) > 0.5, 1.0, -1.0)
    return np.logaddexp(0.0, -sign * z)


def loss_scores(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The loss attack's score: higher means more likely a member (−loss)."""
    return -example_losses(logits, y)


def logit_confidence(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's statistic: the logit of the probability given to the true label,
    log(c / (1 − c)) (Carlini et al. 2022), roughly Gaussian across shadow models;
    for a binary logit z it is z for label 1 and −z for label 0."""
    sign = np.where(np.asarray(y) > 0.5, 1.0, -1.0)
    return sign * np.asarray(logits, dtype=np.float64)


def lira_offline_scores(target: np.ndarray, shadow: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Offline LiRA scores: for each example, its target statistic standardised under the
    Gaussian fitted to the shadow models that did not train on it, (φ − μ_out) / σ_out
    (``shadow``: [K, N] statistics, ``out``: [K, N] True where shadow k left example n out).
    The one-sided test's p-value is Φ of this score; the score itself ranks the same without
    Φ's saturation at 1 (which would tie the most exposed examples). Higher means more
    likely a member. Needs at least two OUT shadows per example."""
    shadow, out = np.asarray(shadow, dtype=np.float64), np.asarray(out, dtype=bool)
    n_out = out.sum(axis=0)
    if shadow.shape != out.shape or shadow.shape[1] != len(target) or (n_out < 2).any():
        raise UsageError(
            "lira_offline_scores: shadow and out must be [K, N] with N targets and at least two "
            f"OUT shadows per target (found shapes {shadow.shape}, {out.shape}, "
            f"fewest OUT {int(n_out.min()) if n_out.size else 0})"
        )
    vals = np.where(out, shadow, np.nan)
    mu = np.nanmean(vals, axis=0)
    sd = np.maximum(np.nanstd(vals, axis=0, ddof=1), 1e-3)
    return (np.asarray(target, dtype=np.float64) - mu) / sd


@dataclass(frozen=True)
class AttackRow:
    """One row of the attack table: overall (attribute ``all``) or one subgroup."""

    attribute: str
    group: str
    members: int
    nonmembers: int
    auc: float
    false_positives: int
    fpr: float
    fpr_lo: float
    fpr_hi: float
    true_positives: int
    tpr: float
    tpr_lo: float
    tpr_hi: float


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score) + ½ P(tie): the ROC AUC (scikit-learn)."""
    from sklearn.metrics import roc_auc_score

    s = np.concatenate([member_scores, nonmember_scores])
    t = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    return float(roc_auc_score(t, s))


def attack_row(
    attribute: str,
    group: str,
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    min_false_positives: int = MIN_FALSE_POSITIVES,
    confidence: float = CONFIDENCE,
) -> AttackRow:
    """AUC, and TPR at FPR = k / n_nonmembers (k = ``min_false_positives``), with
    Clopper–Pearson intervals. The threshold is the (k+1)-th highest non-member score:
    members (and non-members) strictly above it are called members."""
    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if len(m) < 1 or len(n) < max(min_false_positives + 1, 2):
        raise UsageError(
            f"attack on {attribute}={group}: need at least one member and "
            f"{min_false_positives + 1} non-members, found {len(m)} and {len(n)}"
        )
    cut = np.sort(n)[::-1][min_false_positives]
    fp, tp = int((n > cut).sum()), int((m > cut).sum())
    fpr_lo, fpr_hi = clopper_pearson(fp, len(n), confidence)
    tpr_lo, tpr_hi = clopper_pearson(tp, len(m), confidence)
    return AttackRow(
        attribute=attribute,
        group=group,
        members=len(m),
        nonmembers=len(n),
        auc=auc(m, n),
        false_positives=fp,
        fpr=fp / len(n),
        fpr_lo=fpr_lo,
        fpr_hi=fpr_hi,
        true_positives=tp,
        tpr=tp / len(m),
        tpr_lo=tpr_lo,
        tpr_hi=tpr_hi,
    )


def attack_table(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    member_groups: Any,
    nonmember_groups: Any,
    *,
    min_group_n: int,
    min_false_positives: int = MIN_FALSE_POSITIVES,
    confidence: float = CONFIDENCE,
) -> list[AttackRow]:
    """The overall row, then one row per judged subgroup of every sensitive attribute
    (columns of the two frames ``member_groups`` / ``nonmember_groups``): judged when it holds
    at least ``min_group_n`` members, ``min_group_n`` non-members and
    ``min_false_positives`` + 1 non-members."""
    kw = {"min_false_positives": min_false_positives, "confidence": confidence}
    rows = [attack_row(OVERALL, OVERALL, member_scores, nonmember_scores, **kw)]  # type: ignore[arg-type]
    need = max(min_group_n, min_false_positives + 1)
    for attribute in list(member_groups.columns):
        gm = member_groups[attribute].astype(str).to_numpy()
        gn = nonmember_groups[attribute].astype(str).to_numpy()
        for g in sorted(set(gm) | set(gn)):
            im, inn = gm == g, gn == g
            if int(im.sum()) >= min_group_n and int(inn.sum()) >= need:
                rows.append(
                    attack_row(
                        str(attribute),
                        g,
                        member_scores[im],
                        nonmember_scores[inn],
                        **kw,  # type: ignore[arg-type]
                    )
                )
    return rows


@dataclass(frozen=True)
class ModelAttack:
    """The attack on one model: ``model`` is ``dp`` or ``reference``."""

    model: str
    rows: tuple[AttackRow, ...]

    def overall(self) -> AttackRow:
        return self.rows[0]


@dataclass(frozen=True)
class MembershipRisk:
    """The run's membership-inference results (non-private figures)."""

    attack: str
    nonmember_split: str
    members: int
    nonmembers: int
    min_false_positives: int
    confidence: float
    seconds: float
    models: tuple[ModelAttack, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["private"] = False
        return out

    def facts(self) -> dict[str, Any]:
        """The candidate facts' ``membership_attack`` (:class:`dpgov.gate.facts.
        MembershipFacts`): every row, without the false/true positive counts."""
        keep = ("attribute", "group", "members", "nonmembers", "auc", "fpr", "tpr")
        return {
            "attack": self.attack,
            "nonmember_split": self.nonmember_split,
            "min_false_positives": self.min_false_positives,
            "confidence": self.confidence,
            "rows": [
                {
                    "model": ma.model,
                    **{k: getattr(r, k) for k in keep},
                    "tpr_lo": r.tpr_lo,
                    "tpr_hi": r.tpr_hi,
                }
                for ma in self.models
                for r in ma.rows
            ],
        }

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics under :data:`METRIC_PREFIX` (finite values only)."""
        out: dict[str, float] = {}
        for ma in self.models:
            for r in ma.rows:
                key = f"{METRIC_PREFIX}.{ma.model}.{_safe(r.attribute)}.{_safe(r.group)}"
                for name in ("auc", "tpr", "tpr_lo", "tpr_hi", "fpr"):
                    v = float(getattr(r, name))
                    if math.isfinite(v):
                        out[f"{key}.{name}"] = v
        return out


def predict_logits(model: Any, x: Any, *, batch_size: int = 4096) -> np.ndarray:
    """The model's logit for every row of ``x`` (eval mode, on CPU, float64 out)."""
    import torch

    model = model.to("cpu").eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.ascontiguousarray(x[start : start + batch_size]))
            out.append(model(xb.float()).reshape(-1).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def scores_of(model: Any, data: Arrays) -> np.ndarray:
    """The loss attack's scores of ``model`` on ``data``."""
    return loss_scores(predict_logits(model, data.x), data.y)


def per_patient(scores: np.ndarray, data: Arrays) -> tuple[np.ndarray, Any]:
    """One score per patient (the mean over their records; the unit of privacy is the
    patient) and their sensitive attributes (their first record's); unchanged when every
    patient holds one record."""
    ids = np.asarray(data.patient_id)
    if len(np.unique(ids)) == len(ids):
        return scores, data.sensitive
    import pandas as pd

    frame = data.sensitive.copy()
    frame["__pid"], frame["__score"] = ids, scores
    grouped = frame.groupby("__pid", sort=True)
    mean = grouped["__score"].mean()
    first = grouped.first().drop(columns="__score").loc[mean.index]
    return mean.to_numpy(), pd.DataFrame(first).reset_index(drop=True)


def attack_models(
    models: Sequence[tuple[str, Any]],
    members: Arrays,
    nonmembers: Arrays,
    *,
    nonmember_split: str,
    min_group_n: int,
    min_false_positives: int = MIN_FALSE_POSITIVES,
    confidence: float = CONFIDENCE,
) -> MembershipRisk:
    """The loss attack on each named model, members against non-members, one score per
    patient (:func:`per_patient`)."""
    import time

    started = time.perf_counter()
    out = []
    n_members = n_non = 0
    for name, model in models:
        ms, mg = per_patient(scores_of(model, members), members)
        ns, ng = per_patient(scores_of(model, nonmembers), nonmembers)
        n_members, n_non = len(ms), len(ns)
        rows = attack_table(
            ms,
            ns,
            mg,
            ng,
            min_group_n=min_group_n,
            min_false_positives=min_false_positives,
            confidence=confidence,
        )
        out.append(ModelAttack(model=name, rows=tuple(rows)))
    return MembershipRisk(
        attack=LOSS_ATTACK,
        nonmember_split=nonmember_split,
        members=n_members,
        nonmembers=n_non,
        min_false_positives=min_false_positives,
        confidence=confidence,
        seconds=time.perf_counter() - started,
        models=tuple(out),
    )


def attack_run(p: Any, outcome: Any, evals: Any) -> MembershipRisk | None:
    """The governed run's hook (``train.membership_attack: true``), called after evaluate
    and before track, while the reference model still exists: the loss attack on the DP model
    and the reference, members = the patients DP-SGD trained on, non-members = the
    validation split (else the test split), subgroups judged by the policy's
    ``fairness.min_group_size``. None (a logged warning, no figures, nothing listed) when
    neither split holds more than :data:`MIN_FALSE_POSITIVES` patients: the run is already
    charged, so an attack that cannot be made does not fail it."""
    validation = getattr(p, "validation", None)
    if validation is not None and len(validation.y) > MIN_FALSE_POSITIVES:
        nonmembers, split = validation, "validation"
    else:
        nonmembers, split = p.test, "test"
    if len(nonmembers.y) <= MIN_FALSE_POSITIVES:  # the run is charged by now: keep it
        import logging

        logging.getLogger(__name__).warning(
            "train.membership_attack: no attack, it needs more than %d non-member patients "
            "(validation or test split), found %d",
            MIN_FALSE_POSITIVES,
            len(nonmembers.y),
        )
        return None
    models: list[tuple[str, Any]] = [("dp", outcome.result.model)]
    if evals.reference_result is not None:
        models.append(("reference", evals.reference_result.model))
    return attack_models(
        models,
        p.train,
        nonmembers,
        nonmember_split=split,
        min_group_n=rule_of(p.policy.policy.fairness).min_size,
    )
