"""Checks of a run's parameters that need no server: made before Prefect, MLflow or a ledger
write starts, so bad input is one line and exit 2 with nothing started.

``load_params`` already checks the ``train:`` and ``model:`` sections; this adds what a flow
would otherwise find only once the server is up: the ``data:`` section (its keys and types)
and the data contract it names (readable, valid). Lightweight: no torch, Prefect or MLflow.
"""

from __future__ import annotations

from dpgov.data.contract import load_contract
from dpgov.data.params import DataParams
from dpgov.training.params import RunParams, data_params


def check_run_params(params: RunParams) -> DataParams:
    """The ``data:`` section, validated, once its contract is known to load (UsageError: one
    line naming the key or the contract file)."""
    data = data_params(params)
    load_contract(data.contract)  # unreadable or invalid: UsageError naming the file
    return data
