"""The result of a validation and its files: ``result.json`` (every check, strict JSON) and
``summary.md`` (a short readable report), in ``data/validation/<dataset>/`` by default."""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpgov.contracts import json_safe
from dpgov.data.validation.records import GX, PANDAS, PANDAS_NOTE, Check
from dpgov.errors import UsageError

VALIDATION_ROOT = Path("data/validation")


@dataclass
class ValidationResult:
    dataset: str
    ok: bool
    checks: list[Check]
    data_version: str | None
    source: dict[str, Any]
    contract: dict[str, Any]
    policy: dict[str, Any]
    prepared: str
    great_expectations: str
    validated_at: str
    seconds: float
    result_file: str | None = None
    summary_file: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checks_total"] = len(self.checks)
        out["checks_failed"] = len(self.failed)
        out["checks_by_engine"] = {
            e: sum(1 for c in self.checks if c.engine == e) for e in (GX, PANDAS)
        }
        out["note"] = f"checks with engine 'pandas' are {PANDAS_NOTE}"
        return out

    def summary_markdown(self) -> str:
        return _summary(self)


def write_report(result: ValidationResult, target: Path) -> None:
    """result.json and summary.md, written together (temporary folder, then rename)."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"output {parent}: cannot create ({err.strerror or err})") from err
    result.result_file = str(target / "result.json")
    result.summary_file = str(target / "summary.md")
    tmp = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        (tmp / "result.json").write_text(json.dumps(json_safe(result.to_dict()), indent=2) + "\n")
        (tmp / "summary.md").write_text(result.summary_markdown())
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)
        raise UsageError(f"output {target}: cannot write ({err.strerror or err})") from err
    shutil.rmtree(old, ignore_errors=True)


def _summary(r: ValidationResult) -> str:
    failed = r.failed
    warnings = [c for c in r.checks if c.severity == "warning" and not c.success]
    by_engine = {e: sum(1 for c in r.checks if c.engine == e) for e in (GX, PANDAS)}
    lines = [
        f"# Validation of {r.dataset}: {'PASSED' if r.ok else 'FAILED'}",
        "",
        f"- data version: `{r.data_version}` (prepared at `{r.prepared}`)",
        f"- source: `{r.source['name']}` ({r.source['rows']} rows), contract: "
        f"`{r.contract['path']}`",
        f"- policy: `{r.policy['path']}` (δ = {r.policy['delta']:g})",
        f"- {len(r.checks)} checks, {len(failed)} failed, {len(warnings)} warnings; "
        f"Great Expectations {r.great_expectations} ran {by_engine[GX]}, pandas computed "
        f"{by_engine[PANDAS]} (no GX expectation exists for them)",
        f"- validated at {r.validated_at} in {r.seconds:.1f} s",
        "",
    ]
    if failed:
        lines += ["## Failed", ""]
        lines += [f"- [{c.table}] {c.name}: {c.detail or 'failed'} ({c.engine})" for c in failed]
        lines.append("")
    if warnings:
        lines += ["## Warnings", ""]
        lines += [f"- [{c.table}] {c.name}: {c.detail}" for c in warnings]
        lines.append("")
    lines += ["## Checks by rule", "", "| rule | checks | failed | engine |", "|---|---|---|---|"]
    rules: dict[str, list[Check]] = {}
    for c in r.checks:
        rules.setdefault(c.rule, []).append(c)
    for rule, cs in rules.items():
        engines = ", ".join(sorted({c.engine for c in cs}))
        lines.append(f"| {rule} | {len(cs)} | {sum(c.failed for c in cs)} | {engines} |")
    return "\n".join(lines) + "\n"
