"""Data a governed run can validate and train on, for tests and benchmarks.

A governed run validates its data before anything else, so a test of the whole sequence needs
what a user has: a source file, its data contract and the data prepared from them.
:func:`governed_data` writes all three (the blocks are not registered: the run's reservation
registers them) and :meth:`GovernedData.params` points run params at them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpgov.data.params import DataParams
from dpgov.data.preparation import prepare
from dpgov.testing.sources import make_tabular, tabular_contract, write_images, write_yaml
from dpgov.training.params import RunParams, parse_params


@dataclass(frozen=True)
class GovernedData:
    """A prepared folder with the ``data:`` section that validates it."""

    prepared: Path
    data: dict[str, Any]

    @property
    def dataset(self) -> str:
        return str(self.data["dataset"])

    def params(self, params: RunParams | dict[str, Any]) -> RunParams:
        """``params`` (a RunParams or a params mapping) trained on this data."""
        raw = params.model_dump(mode="json") if isinstance(params, RunParams) else dict(params)
        raw["data"] = dict(self.data)
        raw["train"] = {**(raw.get("train") or {}), "data": str(self.prepared)}
        return parse_params(raw)


def governed_data(
    root: str | Path,
    *,
    kind: str = "tabular",
    n: int = 600,
    seed: int = 0,
    dataset: str | None = None,
    n_blocks: int = 2,
    **contract_kw: Any,
) -> GovernedData:
    """Write a source and its contract under ``root/raw``, prepare it under ``root/<dataset>``
    (tabular: ``n_blocks`` blocks, one per year from 2001; blocks not registered) and return
    both."""
    out = Path(root)
    params = DataParams(seed=seed, min_block_patients=1)
    if kind == "tabular":
        name = dataset or "synthetic"
        raw = out / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        source = raw / f"{name}.csv"
        make_tabular(n, n_blocks=n_blocks, seed=seed).to_csv(source, index=False)
        contract = write_yaml(tabular_contract(name, **contract_kw), raw / f"{name}.yaml")
        metadata = None
    elif kind == "image":
        name = dataset or "synthimg"
        source, contract, metadata = write_images(
            out / "raw",
            dataset=name,
            seed=seed,
            n_train=n,
            n_val=max(1, n // 5),
            n_test=max(2, n // 2),
        )
    else:
        raise ValueError(f"kind must be tabular or image, found {kind!r}")
    result = prepare(
        source,
        contract,
        dataset=name,
        metadata=metadata,
        out=out / name,
        params=params,
        register=False,
    )
    section: dict[str, Any] = {
        "dataset": name,
        "source": str(source),
        "contract": str(contract),
        "seed": seed,
        "min_block_patients": 1,
    }
    if metadata is not None:
        section["metadata"] = str(metadata)
    return GovernedData(prepared=Path(result.path), data=section)
