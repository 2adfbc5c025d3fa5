"""Builders for gate inputs that pass the default policy; tests override one thing each."""

from __future__ import annotations

from typing import Any

from dpgov.gate.decision import BlockFacts, LedgerFacts
from dpgov.gate.facts import CandidateFacts, Gap, ReferenceFacts, SubgroupMetric
from dpgov.gate.standing import ApprovalRecord
from dpgov.policy import Policy

MODEL = "flchain-mlp"
BUDGET = {"epsilon_per_block": 8.0, "delta": 1e-5, "accountant": "pld"}


def policy(**sections: Any) -> Policy:
    """The default policy (every section at its default) with ``sections`` merged in."""
    data: dict[str, Any] = {"version": 1, "budget": dict(BUDGET)}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Policy.model_validate(data)


def subgroup(
    attribute: str,
    group: str,
    n: int,
    positives: int,
    auroc: float | None,
    fnr: float | None,
    width: float = 0.04,
) -> SubgroupMetric:
    return SubgroupMetric(
        attribute=attribute,
        group=group,
        n=n,
        positives=positives,
        auroc=auroc,
        auroc_lo=None if auroc is None else auroc - width,
        auroc_hi=None if auroc is None else auroc + width,
        fnr=fnr,
        fnr_lo=None if fnr is None else fnr - width,
        fnr_hi=None if fnr is None else fnr + width,
    )


SUBGROUPS = [
    subgroup("sex", "F", 400, 50, 0.79, 0.30),
    subgroup("sex", "M", 380, 48, 0.81, 0.35),
    subgroup("age_band", "50-59", 300, 20, 0.78, 0.40),
    subgroup("age_band", "60-69", 250, 30, 0.80, 0.35),
    subgroup("age_band", "70+", 230, 48, 0.82, 0.30),
]
GAPS = [
    Gap(
        attribute="sex", metric="auroc", gap=0.02, lo=0.0, hi=0.08, groups_judged=2, min_group_n=30
    ),
    Gap(attribute="sex", metric="fnr", gap=0.05, lo=0.0, hi=0.12, groups_judged=2, min_group_n=30),
    Gap(
        attribute="age_band",
        metric="auroc",
        gap=0.04,
        lo=0.0,
        hi=0.10,
        groups_judged=3,
        min_group_n=30,
    ),
    Gap(
        attribute="age_band",
        metric="fnr",
        gap=0.10,
        lo=0.02,
        hi=0.18,
        groups_judged=3,
        min_group_n=30,
    ),
]
REFERENCE_GAPS = [
    Gap(attribute="sex", metric="auroc", gap=0.01, groups_judged=2, min_group_n=30),
    Gap(attribute="sex", metric="fnr", gap=0.04, groups_judged=2, min_group_n=30),
    Gap(attribute="age_band", metric="auroc", gap=0.03, groups_judged=3, min_group_n=30),
    Gap(attribute="age_band", metric="fnr", gap=0.08, groups_judged=3, min_group_n=30),
]


def facts(**overrides: Any) -> CandidateFacts:
    """Candidate facts that pass the default policy."""
    data: dict[str, Any] = {
        "model_name": MODEL,
        "model_version": "1",
        "run_id": "run-1",
        "private": True,
        "author": "bob",
        "dataset": "flchain",
        "data_version": "abc123.dir",
        "blocks": ["1995", "1996"],
        "reservation_id": "res-1",
        "ledger_entries": [3, 4],
        "epsilon": 2.0,
        "delta": 1e-5,
        "accountant": "pld",
        "noise_multiplier": 1.1,
        "sample_rate": 0.01,
        "steps": 100,
        "max_grad_norm": 1.0,
        "secure_rng": False,
        "noise_source": "os_entropy",
        "n_train_patients": 2000,
        "auroc": 0.80,
        "auroc_lo": 0.75,
        "auroc_hi": 0.85,
        "accuracy": 0.88,
        "brier": 0.09,
        "calibration_error": 0.03,
        "subgroups": SUBGROUPS,
        "gaps": GAPS,
        "reference": ReferenceFacts(run_id="run-ref", auroc=0.85, gaps=REFERENCE_GAPS),
        "policy_sha256": "0" * 64,
    }
    data.update(overrides)
    return CandidateFacts.model_validate(data)


def block(name: str, spent: float = 2.0, limit: float = 8.0, **kw: Any) -> BlockFacts:
    return BlockFacts(
        dataset="flchain",
        block=name,
        epsilon_spent=spent,
        epsilon_limit=limit,
        delta=1e-5,
        charges=1,
        **kw,
    )


def ledger_facts(**overrides: Any) -> LedgerFacts:
    data: dict[str, Any] = {
        "blocks": (block("1995"), block("1996")),
        "reservation_id": "res-1",
        "reservation_state": "committed",
        "reservation_dataset": "flchain",
        "reservation_blocks": ("1995", "1996"),
        "run_epsilon": 2.0,
        "chain_ok": True,
    }
    data.update(overrides)
    return LedgerFacts(**data)


def approval(by: str, seq: int, text: str = "ok", identity: str | None = None) -> ApprovalRecord:
    """An approval recorded by the authenticated identity ``identity`` (default: ``by``)."""
    return ApprovalRecord(kind="approval", by=by, text=text, seq=seq, identity=identity or by)


def refusal(by: str, seq: int, text: str = "no", identity: str | None = None) -> ApprovalRecord:
    return ApprovalRecord(kind="refusal", by=by, text=text, seq=seq, identity=identity or by)


APPROVED = (approval("alice", 10),)
