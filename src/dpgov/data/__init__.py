"""Data: contracts, prepare, validation (Great Expectations) and versions (DVC).

``load_prepared(path)`` reads ``data/prepared/<dataset>/`` (:mod:`.prepared_data`);
``data_version(path)`` gives its DVC md5. ``prepare(...)`` (:mod:`.preparation`) and
``validate(...)`` (:mod:`.validation`) are what ``dpgov data prepare|validate`` run;
``ensure_validated(...)`` is the validate step of a governed run.
Names are imported on first use, so ``import dpgov.data`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Contract": "dpgov.data.contract",
    "LoadedContract": "dpgov.data.contract",
    "load_contract": "dpgov.data.contract",
    "PreparedData": "dpgov.data.prepared_data",
    "load_prepared": "dpgov.data.prepared_data",
    "prepare": "dpgov.data.preparation",
    "PrepareResult": "dpgov.data.preparation",
    "data_version": "dpgov.data.versioning",
    "validate": "dpgov.data.validation",
    "ValidationResult": "dpgov.data.validation",
    "Validated": "dpgov.data.validation",
    "ensure_validated": "dpgov.data.validation",
    "DataParams": "dpgov.data.params",
    "load_params": "dpgov.data.params",
}

__all__ = [
    "Contract",
    "DataParams",
    "LoadedContract",
    "PrepareResult",
    "PreparedData",
    "Validated",
    "ValidationResult",
    "data_version",
    "ensure_validated",
    "load_contract",
    "load_params",
    "load_prepared",
    "prepare",
    "validate",
]

if TYPE_CHECKING:
    from dpgov.data.contract import Contract, LoadedContract, load_contract
    from dpgov.data.params import DataParams, load_params
    from dpgov.data.preparation import PrepareResult, prepare
    from dpgov.data.prepared_data import PreparedData, load_prepared
    from dpgov.data.validation import Validated, ValidationResult, ensure_validated, validate
    from dpgov.data.versioning import data_version


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dpgov.data' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
