"""Privacy statements of released models, written from the ledger (not from what the run said).

A statement says what guarantee a released model carries, for whom, and what it does not cover:
the run's own (ε, δ) recomputed from the mechanism its reservation committed, the DP-SGD
parameters, the unit of privacy, the data it covers, every block's cumulative ε now, the policy
and the ledger entries that back it. What the training run logged (``privacy_statement.json``)
is kept beside it for comparison.

It also says where the noise came from (the run's recorded ``noise_source``: a seed-derived,
reproducible noise voids the guarantee), and, when the gate decision the release rests on
judged fairness widening against the non-private reference
(:mod:`dpgov.report.checks.reference`), that the release depended on a model trained without
differential privacy. And it says whether the test metrics were DP-evaluated (issue 17: at what
ε, on which test blocks and attempt, recomputed from the ledger's charge) or exact, which it
then lists under "not covered", as it lists the membership-inference attack when the run's
candidate facts record one (``membership_attack``: non-private uses of patient data).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dpgov.accounting import AccountantFailed
from dpgov.contracts import MEMBERSHIP_NOT_COVERED, NOT_COVERED, TAG_PRIVATE, TAG_RESERVATION
from dpgov.gate.empirical import EmpiricalAudit, empirical_text
from dpgov.policy import LoadedPolicy
from dpgov.report.checks.evaluations import EvaluatedRelease
from dpgov.report.checks.membership_risk import membership_text
from dpgov.report.checks.reference import ReferenceRelease
from dpgov.report.replay import Epsilons, Replay
from dpgov.report.rows import PrivacyStatement, ReleaseRow, ReleaseStatement
from dpgov.tracking.records import ReleaseArtifacts
from dpgov.training.factory import model_sentence

UTILITY = ("auroc", "auroc_lo", "auroc_hi", "accuracy", "brier", "calibration_error")


def release_statement(
    release: ReleaseRow,
    artifacts: ReleaseArtifacts | None,
    r: Replay,
    eps: Epsilons,
    policy: LoadedPolicy,
    block_eps: dict[tuple[str, str], float | None],
    reference: ReferenceRelease | None = None,
    evaluation: EvaluatedRelease | None = None,
    empirical: EmpiricalAudit | None = None,
) -> ReleaseStatement:
    """The statement of one released model version, its subgroup metrics, gaps and utility
    (from the run's candidate facts), and the statement the run logged. ``reference``: the
    non-private reference its gate decision used (said in the text). ``evaluation``: the
    DP-evaluated release its test metrics come from, with its cost as the ledger charged it
    (:mod:`dpgov.report.checks.evaluations`); without one the exact test metrics are listed
    as not covered."""
    facts = (artifacts.facts if artifacts else None) or {}
    tags = release.tags or {}
    rid = facts.get("reservation_id") or tags.get(TAG_RESERVATION) or None
    charge = r.charges.get(rid) if rid else None
    budget = policy.policy.budget
    delta = facts.get("delta") or (charge.delta if charge else None) or budget.delta
    accountant = (
        facts.get("accountant") or (charge.accountant if charge else None) or budget.accountant
    )
    epsilon = None
    if charge is not None:
        try:
            epsilon = eps.of([charge.mechanism], delta=float(delta), accountant=str(accountant))
        except (AccountantFailed, ValueError):
            epsilon = None
        dataset: Any = charge.dataset
        blocks: list[Any] = list(charge.blocks)
        data_version = charge.data_version or facts.get("data_version")
        entries = [x for x in (charge.seq, charge.closed_seq) if x is not None]
    else:
        dataset = facts.get("dataset")
        blocks = facts.get("blocks") or []
        data_version = facts.get("data_version")
        entries = []
    decision = release.check.decision_seq
    entries += [x for x in (decision, release.promotion_seq) if x is not None]
    s = PrivacyStatement(
        model=release.model,
        version=release.version,
        alias=release.alias,
        promoted=release.promoted,
        private=bool(facts.get("private", tags.get(TAG_PRIVATE) == "true")),
        reservation=rid,
        ledger_charge=charge.status if charge else "missing",
        unit_of_privacy="patient",
        records_per_patient=int(facts.get("max_records_per_patient") or 1),
        neighbouring="add/remove one patient",
        sampling="poisson",
        secure_rng=facts.get("secure_rng"),
        max_grad_norm=facts.get("max_grad_norm"),
        policy_sha256=release.check.policy_sha256,
        approvers=[a.by for a in release.check.approvals],
        not_covered=not_covered(evaluation is not None)
        + ((MEMBERSHIP_NOT_COVERED,) if facts.get("membership_attack") else ()),
        delta=delta,
        accountant=accountant,
        epsilon=epsilon,
        epsilon_logged=facts.get("epsilon"),
        mechanism=charge.mechanism if charge is not None else None,
        dataset=dataset,
        blocks=blocks,
        data_version=data_version,
        ledger_entries=entries,
        n_train_patients=facts.get("n_train_patients"),
        cumulative_epsilon_per_block={b: block_eps.get((str(dataset), b)) for b in blocks},
        epsilon_per_block_limit=budget.epsilon_per_block,
        block_delta=budget.delta,
        evaluation=_evaluation(evaluation, dataset, block_eps),
        empirical=asdict(empirical) if empirical is not None else None,
    )
    return ReleaseStatement(
        statement=s,
        text=statement_text(s)
        + (_sources_text(facts, reference) if s.private else "")
        + membership_text(facts.get("membership_attack"))
        + _self_approval_text(facts.get("author"), s.approvers)
        + _model_text(artifacts.statement if artifacts else None),
        subgroups=list(facts.get("subgroups") or []),
        gaps=list(facts.get("gaps") or []),
        utility={k: facts.get(k) for k in UTILITY if facts.get(k) is not None},
        logged_statement=artifacts.statement if artifacts else None,
        artifact_problems=list(artifacts.problems) if artifacts else ["not read"],
    )


EXACT_TEST_METRICS = (
    "the exact test metrics (AUROC, accuracy, Brier score, calibration, per-subgroup AUROC "
    "and false-negative rates, their gaps, and the reference's), released without noise: "
    "the test metrics were not DP-evaluated"
)
DP_TEST_METRICS = (
    "the test split's patients beyond the DP-evaluated release stated above (charged to their "
    "test blocks; the exact test metrics are never written)"
)


def not_covered(dp_evaluated: bool) -> tuple[str, ...]:
    """:data:`NOT_COVERED` with the test split's line said as it is for this release: the
    exact test metrics, or the DP-evaluated release that replaced them."""
    line = DP_TEST_METRICS if dp_evaluated else EXACT_TEST_METRICS
    return tuple(line if item == NOT_COVERED[0] else item for item in NOT_COVERED)


def _evaluation(
    evaluation: EvaluatedRelease | None,
    dataset: Any,
    block_eps: dict[tuple[str, str], float | None],
) -> dict[str, Any]:
    """The statement's ``evaluation``: the release and its cost, with each test block's
    cumulative ε now (every release charged to its patients so far)."""
    if evaluation is None:
        return {"private": False}
    return {
        **evaluation.to_dict(),
        "cumulative_epsilon_per_test_block": {
            b: block_eps.get((str(dataset), b)) for b in evaluation.test_blocks
        },
    }


def evaluation_text(ev: dict[str, Any] | None) -> str:
    """The sentence on the test metrics: DP-evaluated (at what ε, on which test blocks and
    attempt, and the ledger's charge) or exact."""
    if not ev or not ev.get("private", True) or "epsilon" not in ev:
        return "Test metrics: exact, NOT differentially private (see Not covered)."
    eps = ev.get("epsilon_ledger")
    eps = eps if isinstance(eps, int | float) else ev.get("epsilon")
    blocks = ", ".join(str(b) for b in ev.get("test_blocks") or []) or "none"
    cum = ", ".join(
        f"{b} ε = {_num(v)}" for b, v in (ev.get("cumulative_epsilon_per_test_block") or {}).items()
    )
    return (
        f"Test metrics: DP-evaluated, one release of noisy per-class score histograms "
        f"(Gaussian mechanism, attempt {ev.get('attempt')} on these test blocks): "
        f"(ε = {_num(eps)}, δ = {_num(ev.get('delta'), 'g')}) charged to the test patients of "
        f"block(s) {blocks} (reservation {ev.get('reservation') or 'none'}: "
        f"{ev.get('charge')}); the gate judged bounds that cover sampling and noise."
        + (f" Test patients have spent, over all releases so far: {cum}." if cum else "")
    )


def _model_text(logged: dict[str, Any] | None) -> str:
    """The run's own model (``model.factory``) and its pretrained weights' SHA-256, as the
    run's logged statement records them (checked before training; not in the ledger)."""
    sentence = model_sentence((logged or {}).get("model"))
    return f"\n{sentence}" if sentence else ""


def _self_approval_text(author: Any, approvers: list[str]) -> str:
    """Said when the run's own author approved its release (a single-user policy's
    ``approvals.allow_author``): no second person looked at it."""
    if not author or author not in approvers:
        return ""
    return (
        f"\nApproved by the run's own author ({author}), as the policy in force allowed "
        "(approvals.allow_author: true): no second person reviewed this release.\n"
    )


def _sources_text(facts: dict[str, Any], reference: ReferenceRelease | None) -> str:
    """What the guarantee rests on beyond the ledger: the noise source and the reference."""
    source = facts.get("noise_source")
    if source == "os_entropy":
        noise = (
            "Noise: the Gaussian noise and the Poisson sampling were drawn from "
            "operating-system entropy (secret, not cryptographically secure)."
        )
    elif source == "csprng":
        noise = (
            "Noise: the Gaussian noise and the Poisson sampling were drawn from a "
            "cryptographically secure generator (Opacus secure mode)."
        )
    else:
        how = "derived from train.seed" if source == "seed" else "not recorded (older run)"
        noise = (
            f"Noise: REPRODUCIBLE ({how}): anyone who can read the run may regenerate the "
            "noise, and the guarantee above assumes it is secret."
        )
    out = "\n" + noise
    if reference is not None:
        out += f"\nNon-private reference: {reference.sentence()}."
    return out


def _num(x: Any, fmt: str = ".4f") -> str:
    return format(x, fmt) if isinstance(x, int | float) and not isinstance(x, bool) else "unknown"


def statement_text(s: PrivacyStatement) -> str:
    """The statement as sentences a reader outside the team can follow."""
    lines = []
    head = f"{s.model} version {s.version} (@{s.alias}"
    head += f", released {s.promoted})" if s.promoted else ")"
    if not s.private:
        return head + ": NOT trained with differential privacy; it carries no guarantee."
    lines.append(
        f"{head} was trained with differential privacy: (ε = {_num(s.epsilon)}, "
        f"δ = {_num(s.delta, 'g')}) for this run alone, recomputed from the mechanism its "
        f"ledger reservation committed, with the {str(s.accountant).upper()} accountant."
    )
    m = s.mechanism
    if m is not None and m.steps is not None:
        lines.append(
            f"Mechanism: DP-SGD with Poisson sampling at rate q = {_num(m.sample_rate, '.6g')}, "
            f"noise multiplier σ = {_num(m.noise_multiplier, '.6g')}, per-example clipping "
            f"norm C = {_num(s.max_grad_norm, 'g')}, {m.steps} steps."
        )
    lines.append(
        "Unit of privacy: one patient (one training record each); neighbouring "
        "datasets differ by adding or removing one patient."
    )
    blocks = ", ".join(s.blocks) or "unknown"
    n = s.n_train_patients
    lines.append(
        f"Covers: dataset {s.dataset!r}, blocks {blocks}, data version "
        f"{s.data_version or 'unknown'}" + (f", {n} training patients." if n is not None else ".")
    )
    cum = ", ".join(f"{b} ε = {_num(v)}" for b, v in s.cumulative_epsilon_per_block.items())
    lines.append(
        f"Every patient in those blocks has spent, over all runs so far: {cum} "
        f"(limit {s.epsilon_per_block_limit:g} at δ = {s.block_delta:g})."
    )
    lines.append(evaluation_text(s.evaluation))
    lines.append(empirical_text(s.empirical))  # dpgov.gate.empirical (issue 18)
    lines.append("Not covered: " + "; ".join(s.not_covered) + ".")
    approvers = ", ".join(s.approvers) or "none recorded"
    lines.append(
        f"Released under policy sha256 {s.policy_sha256 or 'unknown'}, approved by "
        f"{approvers}; ledger entries "
        f"{', '.join(str(e) for e in s.ledger_entries) or 'none'} (reservation "
        f"{s.reservation or 'none'}: {s.ledger_charge})."
    )
    return "\n".join(lines)
