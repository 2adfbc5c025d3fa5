"""Loading a policy file: one clear line for every way it can be wrong."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpgov import names, yamlio
from dpgov.errors import UsageError
from dpgov.policy.schema import Policy


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    path: Path  # the file read; for a policy set on the ledger, the file it was set from
    sha256: str  # hash of the file's bytes: recorded with every charge and decision
    text: str = ""  # the YAML text itself (what `dpgov policy set` records)
    seq: int | None = None  # the ledger entry that put it in force (None: not from the ledger)
    dataset: str | None = None  # the dataset it governs when set for one (None: every one)


def packaged_policy_path() -> Path:
    """The policy shipped inside the package (``src/dpgov/defaults/policy.yaml``): the one in
    force on a ledger no ``dpgov policy set`` has changed. Never a file of the working
    directory."""
    return Path(__file__).resolve().parent.parent / "defaults" / "policy.yaml"


def load_policy(path: str | Path | None = None) -> LoadedPolicy:
    """Read and validate a policy YAML file (default: the packaged policy,
    :func:`packaged_policy_path`): the one YAML loader (:mod:`dpgov.yamlio`: duplicate keys,
    deep nesting and alias bombs refused), the schema, and the name rule for
    ``approvals.approvers`` and the governance identities (:func:`dpgov.names.identity`)."""
    file = Path(path) if path is not None else packaged_policy_path()
    where = f"policy {file}"
    raw = yamlio.read_bytes(file, where=where)
    return parse_policy(raw, path=file, where=where)


def parse_policy(raw: bytes, *, path: Path, where: str) -> LoadedPolicy:
    """Validate a policy's YAML bytes (as :func:`load_policy` does a file's)."""
    from pydantic import ValidationError

    data = yamlio.parse_mapping(raw, where=where)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as err:
        raise UsageError(f"{where}: {describe_validation_error(err)}") from err
    except RecursionError as err:
        raise UsageError(f"{where}: nested too deeply") from err
    for i, approver in enumerate(policy.approvals.approvers or []):
        names.identity(approver, argument=f"{where}: approvals.approvers.{i}")
    gov = policy.governance
    for key, values in (
        ("policy_setters", gov.policy_setters),
        ("patient_lookup", gov.patient_lookup),
        ("service_identities", gov.service_identities),
    ):
        for i, who in enumerate(values or []):
            names.identity(who, argument=f"{where}: governance.{key}.{i}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:  # pragma: no cover - yamlio refused it already
        raise UsageError(f"{where}: not UTF-8 text") from err
    return LoadedPolicy(policy=policy, path=path, sha256=hashlib.sha256(raw).hexdigest(), text=text)


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
