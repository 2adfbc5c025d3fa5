"""Builders of ledger rows and registry records for the audit's pure checks."""

from __future__ import annotations

import json
from typing import Any

from dpgov.accounting import DpSgdMechanism
from dpgov.report.replay import RawEntry
from dpgov.tracking.records import ModelRecord, RunRecord, VersionRecord

BUDGET = {"epsilon_per_block": 8.0, "delta": 1e-5, "accountant": "pld"}
M1 = DpSgdMechanism(noise_multiplier=1.5, sample_rate=0.05, steps=40)
M2 = DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.1, steps=20)


class Rows:
    """A growing list of entry rows, numbered and timed in order."""

    def __init__(self, policy_sha256: str = "f" * 64) -> None:
        self.rows: list[RawEntry] = []
        self.policy_sha256 = policy_sha256  # the policy every charge and decision names

    def add(
        self,
        kind: str,
        payload: dict[str, Any] | None,
        *,
        text: str | None = None,
        actor: str = "tester",
    ) -> RawEntry:
        seq = len(self.rows) + 1
        body = text if text is not None else json.dumps(payload)
        row = RawEntry(
            seq,
            kind,
            body,
            f"2026-01-01T00:00:{seq:02d}+00:00",
            actor,
            "p" * 64,
            f"{seq:064x}",
            None,
            payload,
        )
        self.rows.append(row)
        return row

    def block(
        self, block: str, dataset: str = "d", patients: int = 500, version: str | None = "abc.dir"
    ) -> RawEntry:
        return self.add(
            "block_added",
            {"dataset": dataset, "block": block, "patients": patients, "data_version": version},
        )

    def reserve(
        self,
        rid: str,
        blocks: list[str],
        mech: DpSgdMechanism = M1,
        *,
        dataset: str = "d",
        after: dict[str, float] | None = None,
        version: str | None = "abc.dir",
    ) -> RawEntry:
        return self.add(
            "reservation",
            {
                "reservation": rid,
                "dataset": dataset,
                "blocks": blocks,
                "mechanism": mech.to_dict(),
                "run_id": None,
                "data_version": version,
                "policy_sha256": self.policy_sha256,
                "budget": BUDGET,
                "epsilon_run": 1.0,
                "epsilon_after": after or {},
            },
        )

    def commit(
        self,
        rid: str,
        mech: DpSgdMechanism = M1,
        *,
        run_id: str | None = None,
        steps: int | None = None,
    ) -> RawEntry:
        return self.add(
            "commit",
            {
                "reservation": rid,
                "steps": steps or mech.steps,
                "mechanism": mech.to_dict(),
                "run_id": run_id,
            },
        )

    def close(self, kind: str, rid: str, reason: str = "x") -> RawEntry:
        return self.add(kind, {"reservation": rid, "reason": reason})

    def decision(
        self,
        model: str,
        version: str,
        *,
        allowed: bool = True,
        approvers: list[str] | None = None,
        required: int = 1,
    ) -> RawEntry:
        return self.add(
            "gate_decision",
            {
                "model": model,
                "version": version,
                "allowed": allowed,
                "failing": [] if allowed else ["auroc"],
                "approvers": approvers or [],
                "policy_sha256": self.policy_sha256,
                "policy_path": "policy.yaml",
                "checks": [
                    {
                        "name": "approvals",
                        "observed": len(approvers or []),
                        "limit": required,
                        "passed": True,
                        "reason": "",
                    }
                ],
            },
        )

    def approval(self, model: str, version: str, by: str, kind: str = "approval") -> RawEntry:
        return self.add(
            kind,
            {
                "model": model,
                "version": version,
                "by": by,
                "note": "ok",
                "reason": "no",
                "policy_sha256": self.policy_sha256,
            },
        )

    def promotion(
        self,
        model: str,
        version: str,
        decision_seq: int,
        *,
        replaced: str | None = None,
        alias: str = "champion",
    ) -> RawEntry:
        return self.add(
            "promotion",
            {
                "model": model,
                "version": version,
                "alias": alias,
                "replaced": replaced,
                "decision_seq": decision_seq,
                "policy_sha256": self.policy_sha256,
            },
        )


def model(
    name: str, aliases: dict[str, str], versions: tuple[str, ...] = ("1", "2"), tagged: bool = True
) -> ModelRecord:
    return ModelRecord(
        name=name,
        aliases=aliases,
        tags={},
        versions={
            v: VersionRecord(
                model=name,
                version=v,
                run_id=f"run-{v}",
                tags={"dpgov.run_id": f"run-{v}"} if tagged else {},
                source=None,
                created="",
            )
            for v in versions
        },
    )


def run(
    run_id: str,
    *,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, str] | None = None,
    status: str = "FINISHED",
    end_time: str | None = None,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        experiment_id="1",
        experiment="e",
        name=run_id,
        status=status,
        deleted=False,
        start_time="2026-01-01T00:00:30+00:00",
        end_time=end_time,
        tags=tags or {},
        params=params or {},
        metrics=metrics or {},
    )
