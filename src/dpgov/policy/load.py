"""Loading a policy file: one clear line for every way it can be wrong."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpgov import names, yamlio
from dpgov.config import default_policy_path
from dpgov.errors import UsageError
from dpgov.policy.schema import Policy


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    path: Path
    sha256: str  # hash of the file's bytes: recorded with every charge and decision


def load_policy(path: str | Path | None = None) -> LoadedPolicy:
    """Read and validate a policy YAML file (default ``policies/default.yaml``): the one YAML
    loader (:mod:`dpgov.yamlio`: duplicate keys, deep nesting and alias bombs refused), the
    schema, and the name rule for ``approvals.approvers`` (:func:`dpgov.names.identity`)."""
    from pydantic import ValidationError

    file = Path(path) if path is not None else default_policy_path()
    where = f"policy {file}"
    raw = yamlio.read_bytes(file, where=where)
    data = yamlio.parse_mapping(raw, where=where)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as err:
        raise UsageError(f"{where}: {describe_validation_error(err)}") from err
    except RecursionError as err:
        raise UsageError(f"{where}: nested too deeply") from err
    for i, approver in enumerate(policy.approvals.approvers or []):
        names.identity(approver, argument=f"{where}: approvals.approvers.{i}")
    return LoadedPolicy(policy=policy, path=file, sha256=hashlib.sha256(raw).hexdigest())


def describe_validation_error(err: Any) -> str:
    """First problem of a pydantic ValidationError as one line: where, what, value found."""
    errors = err.errors()
    e = errors[0]
    where = ".".join(str(p) for p in e["loc"]) or "(top level)"
    kind = e.get("type", "")
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        text = f"{where}: unknown key"
    elif kind == "missing":
        text = f"{where}: required key is missing"
    else:
        text = f"{where}: {msg} (found {_short(e.get('input'))})"
    more = len(errors) - 1
    if more:
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return " ".join(text.split())  # always one line


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - a repr that fails: name the type instead
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
