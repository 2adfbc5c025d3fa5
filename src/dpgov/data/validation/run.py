"""A validation run: the source table against its contract (:mod:`.gx_suite` and
:mod:`.source_checks`), the prepared output (:mod:`.output_checks`), and the files of
:mod:`.report`. Nothing is reserved or charged either way."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dpgov.data.contract import Contract, LoadedContract, load_contract
from dpgov.data.params import DataParams
from dpgov.data.prepared_data import load_prepared
from dpgov.data.sources import load_source
from dpgov.data.validation.gx_suite import gx_checks, gx_version
from dpgov.data.validation.image_checks import image_checks
from dpgov.data.validation.output_checks import prepared_checks
from dpgov.data.validation.records import Check
from dpgov.data.validation.report import VALIDATION_ROOT, ValidationResult, write_report
from dpgov.data.validation.source_checks import pandas_source_checks
from dpgov.errors import UsageError
from dpgov.policy import LoadedPolicy, load_policy


def validate(
    source: str | Path | None = None,
    contract: str | Path | LoadedContract | None = None,
    *,
    dataset: str | None = None,
    prepared: str | Path | None = None,
    metadata: str | Path | None = None,
    policy: str | Path | LoadedPolicy | None = None,
    out: str | Path | None = None,
    params: DataParams | None = None,
    write: bool = True,
) -> ValidationResult:
    """Validate ``source`` and its prepared output against the contract and the policy's δ.

    Raises UsageError for unusable input (exit 2); a failing check only sets ``ok`` false.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    params = params or DataParams()
    loaded = contract if isinstance(contract, LoadedContract) else load_contract(contract)
    c = loaded.contract
    name = dataset or c.dataset
    pol = policy if isinstance(policy, LoadedPolicy) else load_policy(policy)
    delta = float(pol.policy.budget.delta)

    t = time.perf_counter()
    src = load_source(source, c, metadata=metadata, horizon_years=params.horizon_years)
    timings["load_source"] = time.perf_counter() - t
    folder = Path(prepared) if prepared is not None else Path("data/prepared") / name
    t = time.perf_counter()
    prep = load_prepared(folder)
    timings["load_prepared"] = time.perf_counter() - t
    made_from = prep.meta.get("source", {}).get("sha256")
    if made_from != src.sha256:
        raise UsageError(
            f"prepared data {folder} was made from other data than {src.name} (source sha256 "
            f"{str(made_from)[:12]}…, now {src.sha256[:12]}…): run `dpgov data prepare` again"
        )
    if prep.meta.get("contract", {}).get("sha256") != loaded.sha256:
        raise UsageError(
            f"prepared data {folder} was made under another contract than {loaded.path}: run "
            f"`dpgov data prepare` again"
        )

    t = time.perf_counter()
    checks = contract_checks(src.frame, c, dataset=name)
    timings["source_checks"] = time.perf_counter() - t
    t = time.perf_counter()
    checks += prepared_checks(prep, c, delta=delta, images=src.images is not None)
    timings["prepared_checks"] = time.perf_counter() - t
    if c.images is not None:  # image files: exist, match their address, decode, sizes
        t = time.perf_counter()
        checks += image_checks(prep, c, name)
        timings["image_checks"] = time.perf_counter() - t

    result = ValidationResult(
        dataset=name,
        ok=not any(ch.failed for ch in checks),
        checks=checks,
        data_version=prep.meta.get("data_version"),
        source={"name": src.name, "sha256": src.sha256, "rows": len(src.frame)},
        contract={"path": loaded.path, "sha256": loaded.sha256},
        policy={"path": str(pol.path), "sha256": pol.sha256, "delta": delta},
        prepared=str(folder),
        great_expectations=gx_version(),
        validated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        seconds=0.0,
        timings=timings,
    )
    result.seconds = round(time.perf_counter() - started, 3)
    if write:
        target = Path(out) if out is not None else VALIDATION_ROOT / name
        write_report(result, target)
    return result


def contract_checks(frame: Any, c: Contract, *, dataset: str = "data") -> list[Check]:
    """Every contract rule on the source table: a GX suite plus the pandas-computed checks."""
    return gx_checks(frame, c, dataset) + pandas_source_checks(frame, c)
