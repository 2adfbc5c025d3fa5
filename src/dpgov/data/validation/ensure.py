"""The validate step of a governed run: a passing validation of the data as it is now.

dpgov trains only on validated data. Before a run reserves budget, :func:`ensure_validated`
either finds a recorded validation (``result.json`` written by ``dpgov data validate``) that
passed for exactly this data version, contract and policy, or validates again with the
``data:`` parameters (source, contract, metadata). A failing validation raises
:class:`Refused` (exit 1) and nothing is reserved; prepared data whose source cannot be found to
validate it raises :class:`UsageError` (exit 2).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpgov.data.params import DataParams
from dpgov.data.prepared_data import load_prepared
from dpgov.data.validation.report import VALIDATION_ROOT
from dpgov.data.validation.run import validate
from dpgov.errors import Refused, UsageError
from dpgov.policy import LoadedPolicy, load_policy


@dataclass(frozen=True)
class Validated:
    dataset: str
    data_version: str
    ok: bool
    reused: bool  # a recorded validation of this exact version was found
    checks: int
    validated_at: str
    result_file: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recorded(
    folder: Path, *, data_version: str, contract_sha256: str | None, policy_sha256: str
) -> dict[str, Any] | None:
    """The recorded validation in ``folder`` when it passed for this version, contract and
    policy; None otherwise."""
    file = folder / "result.json"
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("ok") is not True:
        return None
    same = (
        record.get("data_version") == data_version
        and (record.get("contract") or {}).get("sha256") == contract_sha256
        and (record.get("policy") or {}).get("sha256") == policy_sha256
    )
    return record if same else None


def ensure_validated(
    prepared: str | Path,
    *,
    data_params: DataParams | None = None,
    policy: str | Path | LoadedPolicy | None = None,
    out: str | Path | None = None,
    reuse: bool = True,
) -> Validated:
    """A passing validation of ``prepared`` (reused when recorded for this version, contract
    and policy, else computed now and written to ``out``, default
    ``data/validation/<dataset>``)."""
    started = time.perf_counter()
    params = data_params or DataParams()
    folder = Path(prepared)
    if not (folder / "meta.json").is_file():
        raise UsageError(f"prepared data {folder}: no meta.json (run `dpgov data prepare` first)")
    meta = load_prepared(folder).meta
    dataset = str(meta.get("dataset") or "")
    version = str(meta.get("data_version") or "")
    target = Path(out) if out is not None else VALIDATION_ROOT / dataset
    pol = policy if isinstance(policy, LoadedPolicy) else load_policy(policy)
    contract_sha = (meta.get("contract") or {}).get("sha256")
    if reuse:
        found = recorded(
            target, data_version=version, contract_sha256=contract_sha, policy_sha256=pol.sha256
        )
        if found is not None:
            return Validated(
                dataset=dataset,
                data_version=version,
                ok=True,
                reused=True,
                checks=len(found.get("checks") or []),
                validated_at=str(found.get("validated_at")),
                result_file=str(target / "result.json"),
                seconds=time.perf_counter() - started,
            )
    source = None if params.source in ("bundled:flchain", "flchain") else params.source
    try:
        result = validate(
            source,
            params.contract,
            dataset=dataset,
            prepared=folder,
            metadata=params.metadata,
            policy=policy,
            out=target,
            params=params,
        )
    except UsageError as err:
        raise UsageError(
            f"cannot validate {folder} (data version {version}) before training: {err}; "
            f"validate it with `dpgov data validate` (the data: section names its source and "
            f"contract), or point train.data at validated data"
        ) from err
    if not result.ok:
        failed = ", ".join(c.name for c in result.failed[:3])
        raise Refused(
            f"validation of {folder} failed ({len(result.failed)} check(s): {failed}): "
            "nothing was reserved"
        )
    return Validated(
        dataset=dataset,
        data_version=version,
        ok=True,
        reused=False,
        checks=len(result.checks),
        validated_at=result.validated_at,
        result_file=result.result_file,
        seconds=time.perf_counter() - started,
    )
