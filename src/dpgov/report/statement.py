"""Privacy statements of released models, written from the ledger (not from what the run said).

A statement says what guarantee a released model carries, for whom, and what it does not cover:
the run's own (ε, δ) recomputed from the mechanism its reservation committed, the DP-SGD
parameters, the unit of privacy, the data it covers, every block's cumulative ε now, the policy
and the ledger entries that back it. What the training run logged (``privacy_statement.json``)
is kept beside it for comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dpgov.policy import LoadedPolicy
    from dpgov.report.collect import ReleaseArtifacts
    from dpgov.report.replay import Epsilons, Replay

NOT_COVERED = [
    "the held-out test split (used for evaluation, released as metrics)",
    "the non-private reference model (never promotable)",
    "choices made outside the run (hyperparameters, preprocessing fitted on data)",
]


def release_statement(
    release: dict[str, Any],
    artifacts: ReleaseArtifacts | None,
    r: Replay,
    eps: Epsilons,
    policy: LoadedPolicy,
    block_eps: dict[tuple[str, str], float | None],
) -> dict[str, Any]:
    """``statement`` (dict), ``statement_text``, ``subgroups``, ``gaps``, ``logged_statement``
    and ``artifact_problems`` for one released model version."""
    from dpgov.accounting import AccountantFailed

    facts = (artifacts.facts if artifacts else None) or {}
    tags = release.get("tags") or {}
    rid = facts.get("reservation_id") or tags.get("dpgov.reservation") or None
    charge = r.charges.get(rid) if rid else None
    budget = policy.policy.budget
    s: dict[str, Any] = {
        "model": release["model"],
        "version": release["version"],
        "alias": release["alias"],
        "promoted": release.get("promoted"),
        "private": bool(facts.get("private", tags.get("dpgov.private") == "true")),
        "reservation": rid,
        "ledger_charge": charge.status if charge else "missing",
        "unit_of_privacy": "patient",
        "records_per_patient": 1,
        "neighbouring": "add/remove one patient",
        "sampling": "poisson",
        "secure_rng": facts.get("secure_rng"),
        "max_grad_norm": facts.get("max_grad_norm"),
        "policy_sha256": release.get("policy_sha256"),
        "approvers": [a["by"] for a in release.get("approvals", [])],
        "not_covered": NOT_COVERED,
    }
    delta = facts.get("delta") or (charge.delta if charge else None) or budget.delta
    accountant = (
        facts.get("accountant") or (charge.accountant if charge else None) or budget.accountant
    )
    s.update(delta=delta, accountant=accountant, epsilon=None, epsilon_logged=facts.get("epsilon"))
    if charge is not None:
        m = charge.mechanism
        s.update(
            noise_multiplier=m.noise_multiplier,
            sample_rate=m.sample_rate,
            steps=m.steps,
            mechanism=m.to_dict(),
            dataset=charge.dataset,
            blocks=list(charge.blocks),
            data_version=charge.data_version or facts.get("data_version"),
            ledger_entries=[x for x in (charge.seq, charge.closed_seq) if x is not None],
        )
        try:
            s["epsilon"] = eps.of([m], delta=float(delta), accountant=str(accountant))
        except (AccountantFailed, ValueError):
            s["epsilon"] = None
    else:
        s.update(
            dataset=facts.get("dataset"),
            blocks=facts.get("blocks") or [],
            data_version=facts.get("data_version"),
            ledger_entries=[],
        )
    s["ledger_entries"] = [
        *s["ledger_entries"],
        *[x for x in (release.get("decision_seq"), release.get("promotion_seq")) if x is not None],
    ]
    s["n_train_patients"] = facts.get("n_train_patients")
    s["cumulative_epsilon_per_block"] = {
        b: block_eps.get((str(s["dataset"]), b)) for b in s["blocks"]
    }
    s["epsilon_per_block_limit"] = budget.epsilon_per_block
    s["block_delta"] = budget.delta
    return {
        "statement": s,
        "statement_text": statement_text(s),
        "subgroups": list(facts.get("subgroups") or []),
        "gaps": list(facts.get("gaps") or []),
        "utility": {
            k: facts.get(k)
            for k in ("auroc", "auroc_lo", "auroc_hi", "accuracy", "brier", "calibration_error")
            if facts.get(k) is not None
        },
        "logged_statement": artifacts.statement if artifacts else None,
        "artifact_problems": list(artifacts.problems) if artifacts else ["not read"],
    }


def _num(x: Any, fmt: str = ".4f") -> str:
    return format(x, fmt) if isinstance(x, int | float) and not isinstance(x, bool) else "unknown"


def statement_text(s: dict[str, Any]) -> str:
    """The statement as sentences a reader outside the team can follow."""
    lines = []
    head = f"{s['model']} version {s['version']} (@{s['alias']}"
    head += f", released {s['promoted']})" if s.get("promoted") else ")"
    if not s["private"]:
        return head + ": NOT trained with differential privacy; it carries no guarantee."
    lines.append(
        f"{head} was trained with differential privacy: (ε = {_num(s['epsilon'])}, "
        f"δ = {_num(s['delta'], 'g')}) for this run alone, recomputed from the mechanism its "
        f"ledger reservation committed, with the {str(s['accountant']).upper()} accountant."
    )
    if s.get("steps") is not None:
        lines.append(
            f"Mechanism: DP-SGD with Poisson sampling at rate q = {_num(s['sample_rate'], '.6g')}, "
            f"noise multiplier σ = {_num(s['noise_multiplier'], '.6g')}, per-example clipping "
            f"norm C = {_num(s['max_grad_norm'], 'g')}, {s['steps']} steps."
        )
    lines.append(
        "Unit of privacy: one patient (one training record each); neighbouring "
        "datasets differ by adding or removing one patient."
    )
    blocks = ", ".join(s["blocks"]) or "unknown"
    n = s.get("n_train_patients")
    lines.append(
        f"Covers: dataset {s['dataset']!r}, blocks {blocks}, data version "
        f"{s['data_version'] or 'unknown'}"
        + (f", {n} training patients." if n is not None else ".")
    )
    cum = ", ".join(f"{b} ε = {_num(v)}" for b, v in s["cumulative_epsilon_per_block"].items())
    lines.append(
        f"Every patient in those blocks has spent, over all runs so far: {cum} "
        f"(limit {s['epsilon_per_block_limit']:g} at δ = {s['block_delta']:g})."
    )
    lines.append("Not covered: " + "; ".join(s["not_covered"]) + ".")
    approvers = ", ".join(s["approvers"]) or "none recorded"
    lines.append(
        f"Released under policy sha256 {s['policy_sha256'] or 'unknown'}, approved by "
        f"{approvers}; ledger entries "
        f"{', '.join(str(e) for e in s['ledger_entries']) or 'none'} (reservation "
        f"{s['reservation'] or 'none'}: {s['ledger_charge']})."
    )
    return "\n".join(lines)
