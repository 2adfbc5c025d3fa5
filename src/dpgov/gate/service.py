"""Gathering what the gate judges, and recording what it decided.

:func:`run_gate` reads the candidate's facts from the registry, the ledger facts and approvals
from the ledger, calls the pure :func:`dpgov.gate.decision.evaluate`, then records the decision
as a ledger entry (kind ``gate_decision``, with the policy file's SHA-256) and as tags on the
model version. Bad input (unknown model or version, facts that contradict the registry) raises
:class:`UsageError` before anything is recorded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpgov.accounting import AccountantFailed, epsilon
from dpgov.contracts import compact_json, json_safe
from dpgov.errors import DpgovError, UsageError
from dpgov.gate import bound as bound_facts
from dpgov.gate.bound import Bound
from dpgov.gate.candidate import fit, load_candidate
from dpgov.gate.candidate import parse_version as parse_version  # re-exported for callers
from dpgov.gate.composition import Figures, figures_of
from dpgov.gate.decision import BlockFacts, Decision, LedgerFacts, evaluate
from dpgov.gate.dp_checks import RELEASE_ACCOUNTANT, EvalBlockFacts, EvaluationLedgerFacts
from dpgov.gate.empirical import EmpiricalAudit, latest_audit
from dpgov.gate.facts import CandidateFacts
from dpgov.gate.figures import LedgerFactsWithFigures
from dpgov.gate.ports import ModelVersionInfo, RegistryPort
from dpgov.gate.signatures import approval_message, verify
from dpgov.gate.standing import ApprovalRecord, read_records
from dpgov.ledger.integrity import combine

if TYPE_CHECKING:
    from dpgov.ledger import Entry, Ledger
    from dpgov.policy import LoadedPolicy, Policy


def collect_ledger_facts(ledger: Ledger, facts: CandidateFacts, policy: Policy) -> LedgerFacts:
    """What the ledger says now about the candidate's blocks, reservation and chain."""
    blocks = []
    figures: dict[str, Figures] = {}  # both composition figures (dpgov.gate.composition)
    for name in facts.blocks:
        try:
            st = ledger.block_status(facts.dataset, name, policy.budget)
        except UsageError:
            continue  # unknown block: the gate fails it as "not in the ledger"
        except DpgovError as err:  # the accountant could not compose: never assume it is fine
            blocks.append(
                BlockFacts(
                    facts.dataset,
                    name,
                    math.inf,
                    policy.budget.epsilon_per_block,
                    policy.budget.delta,
                    note=f"cannot compose the block's charges: {err}",
                )
            )
            continue
        blocks.append(
            BlockFacts(
                dataset=st.dataset,
                block=st.block,
                epsilon_spent=st.epsilon_spent,
                epsilon_limit=st.epsilon_limit,
                delta=st.delta,
                charges=st.charges,
                pending=st.pending,
                patients=st.patients,
            )
        )
        figures[name] = figures_of(st)
    rid, state, r_dataset, r_blocks, run_eps = None, "missing", None, None, None
    if facts.reservation_id is not None:
        try:
            res = ledger.reservation(facts.reservation_id)
        except UsageError:
            res = None
        if res is not None:
            rid, state, r_dataset, r_blocks = res.id, res.status, res.dataset, tuple(res.blocks)
            delta = facts.delta if facts.delta is not None else policy.budget.delta
            try:
                run_eps = epsilon([res.mechanism], delta=delta, accountant=policy.budget.accountant)
            except (AccountantFailed, ValueError):
                run_eps = math.inf
    verification = combine(*ledger.verify_all())  # the chain, and the tables against it
    evaluation = collect_evaluation_facts(ledger, facts, policy)
    return LedgerFactsWithFigures(
        figures=figures,
        blocks=tuple(blocks),
        reservation_id=rid,
        reservation_state=state,
        reservation_dataset=r_dataset,
        reservation_blocks=r_blocks,
        run_epsilon=run_eps,
        chain_ok=verification.ok,
        chain_reason=verification.reason or "",
        evaluation=evaluation,
    )


def collect_evaluation_facts(
    ledger: Ledger, facts: CandidateFacts, policy: Policy
) -> EvaluationLedgerFacts | None:
    """What the ledger says now about the candidate's DP-evaluated release: its charge (state,
    blocks, ε of the mechanism charged at the release's δ) and each test block (spent ε at the
    policy's δ, releases charged, retired, split). None when the policy does not evaluate
    privately or the facts record no release (the gate then fails ``dp_evaluation``)."""
    pe = facts.private_evaluation
    if not policy.evaluation.private or pe is None:
        return None
    blocks = []
    for name in pe.test_blocks:
        try:
            st = ledger.block_status(facts.dataset, name, policy.budget)
        except UsageError:
            continue  # unknown block: the gate fails it as "not in the ledger"
        except DpgovError as err:  # the accountant could not compose: never assume it is fine
            blocks.append(
                EvalBlockFacts(
                    facts.dataset,
                    name,
                    math.inf,
                    policy.budget.delta,
                    0,
                    False,
                    "test",
                    note=f"cannot compose the test block's charges: {err}",
                )
            )
            continue
        blocks.append(
            EvalBlockFacts(
                dataset=st.dataset,
                block=st.block,
                epsilon_spent=st.epsilon_spent,
                delta=st.delta,
                charges=st.charges,
                retired=st.retired,
                split=st.split,
            )
        )
    rid, state, r_dataset, r_blocks, eps, z = None, "missing", None, None, None, None
    if pe.reservation_id is not None:
        try:
            res = ledger.reservation(pe.reservation_id)
        except UsageError:
            res = None
        if res is not None:
            rid, state, r_dataset, r_blocks = res.id, res.status, res.dataset, tuple(res.blocks)
            z = getattr(res.mechanism, "noise_multiplier", None)
            try:
                # one Gaussian: the PLD accountant's figure is its exact (analytic) ε, the
                # figure the release is calibrated to; RDP or PRV would only overstate it
                eps = epsilon([res.mechanism], delta=pe.delta, accountant=RELEASE_ACCOUNTANT)
            except (AccountantFailed, ValueError):
                eps = math.inf
    return EvaluationLedgerFacts(
        reservation_id=rid,
        reservation_state=state,
        reservation_dataset=r_dataset,
        reservation_blocks=r_blocks,
        release_epsilon=eps,
        noise_multiplier=z,
        blocks=tuple(blocks),
    )


@dataclass(frozen=True)
class GateInputs:
    facts: CandidateFacts  # the author is the identity the ledger bound, when bound
    info: ModelVersionInfo
    ledger_facts: LedgerFacts
    approvals: tuple[ApprovalRecord, ...]
    bound: Bound | None = None
    empirical: EmpiricalAudit | None = None  # the newest recorded audit (dpgov.gate.empirical)


def verify_signatures(
    records: Sequence[ApprovalRecord], policy: Policy, bound: Bound, model: str, version: str
) -> list[ApprovalRecord]:
    """Each record of an approver with a key in ``approvals.ssh_keys``, its signature checked
    (over :func:`dpgov.gate.signatures.approval_message` of the bound facts)."""
    keys, b = policy.approvals.ssh_keys, bound.binding
    out = []
    for r in records:
        if r.by in keys:
            ok = b is not None and bool(r.signature)
            if ok and b is not None:
                message = approval_message(
                    decision=r.kind,
                    model=model,
                    version=version,
                    run_id=b.run_id,
                    reservation=b.reservation,
                    facts_sha256=b.facts_sha256,
                )
                ok = verify(message, r.signature, principal=r.by, public_key=keys[r.by])
            r = dataclasses.replace(r, signed=ok)
        out.append(r)
    return out


def gather(
    model: str, version: str, policy: LoadedPolicy, ledger: Ledger, registry: RegistryPort
) -> GateInputs:
    facts, info = load_candidate(registry, model, version)
    version = str(facts.model_version)
    bound = bound_facts.collect(ledger, registry, model, version, facts.dataset)
    if bound.binding is not None:  # the author rule compares identities: the ledger's
        facts = facts.model_copy(update={"author": bound.binding.author})
    records = verify_signatures(
        read_records(ledger, model, version), policy.policy, bound, model, version
    )
    return GateInputs(
        facts=facts,
        info=info,
        ledger_facts=collect_ledger_facts(ledger, facts, policy.policy),
        approvals=tuple(records),
        bound=bound,
        empirical=latest_audit(ledger, model, version),
    )


@dataclass(frozen=True)
class GateResult:
    decision: Decision
    inputs: GateInputs
    entry: Entry | None  # the gate_decision ledger entry, when recorded


def run_gate(
    model: str,
    version: str,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
    *,
    record: bool = True,
    purpose: str = "gate",
) -> GateResult:
    """Evaluate the gate now; record the decision in the ledger and as model-version tags."""
    inputs = gather(model, version, policy, ledger, registry)
    decision = evaluate(
        policy.policy,
        inputs.facts,
        inputs.ledger_facts,
        inputs.approvals,
        policy_sha256=policy.sha256,
        run_status=inputs.info.run_status,
        policy_setter=inputs.bound.setter if inputs.bound else None,
        empirical=inputs.empirical,
    )
    if inputs.bound is not None:
        extra = (
            bound_facts.binding_check(inputs.bound, inputs.facts, inputs.info),
            bound_facts.recall_check(inputs.bound),
        )
        decision = dataclasses.replace(decision, checks=(*decision.checks, *extra))
    entry = record_decision(decision, inputs, policy, ledger, registry, purpose) if record else None
    return GateResult(decision=decision, inputs=inputs, entry=entry)


def record_decision(
    decision: Decision,
    inputs: GateInputs,
    policy: LoadedPolicy,
    ledger: Ledger,
    registry: RegistryPort,
    purpose: str,
) -> Entry:
    payload = {
        **decision.to_dict(),
        "purpose": purpose,
        "policy_path": str(policy.path),
        "run_id": inputs.facts.run_id,
        "reservation": inputs.facts.reservation_id,
        "approvals_seen": [r.seq for r in inputs.approvals],
    }
    entry = ledger.append(kind="gate_decision", payload=json_safe(payload))
    failing = ",".join(c.name for c in decision.failing)
    registry.set_tags(
        decision.model,
        decision.version,
        {
            "dpgov.gate.allowed": "true" if decision.allowed else "false",
            "dpgov.gate.failing": fit(failing),
            "dpgov.gate.policy_sha256": policy.sha256,
            "dpgov.gate.seq": str(entry.seq),
            "dpgov.gate.time": entry.time,
            "dpgov.gate.summary": fit(compact_json({c.name: c.passed for c in decision.checks})),
        },
    )
    return entry
