"""Reading a federation: a YAML file (or the command line's flags) into a :class:`FederatedSpec`.

```yaml
mode: record            # record | site  (docs/federated.md)
rounds: 3
local_steps: 10
noise_multiplier: 1.0
clip: 1.0
min_sites: 2
sites:
  - {name: dept-a, data: data/federated/dept-a}
  - {name: dept-b, data: data/federated/dept-b, ledger_url: "postgresql+psycopg://…"}
```

Every way it can be wrong is one line naming the key and the value found (exit 2), before
any site is opened. Adaptive clipping is refused here: its count query is a release that
no site is charged for (docs/federated_accounting.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dpgov import names, yamlio
from dpgov.errors import UsageError
from dpgov.federated.types import FederatedSpec, SiteSpec
from dpgov.policy.load import describe_validation_error

MAX_SITES = 64
MAX_ROUNDS = 10_000


class _Site(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    data: str = Field(min_length=1)
    ledger_url: str | None = None
    id_domain: str | None = None
    source: str | None = None
    contract: str | None = None


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sites: list[_Site] = Field(min_length=1, max_length=MAX_SITES)
    mode: Literal["record", "site"] = "record"
    rounds: int = Field(default=3, ge=1, le=MAX_ROUNDS)
    local_steps: int = Field(default=10, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.05, gt=0, allow_inf_nan=False)
    noise_multiplier: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    clip: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    site_sample_rate: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    amplification: bool = True
    weights: Literal["equal", "records"] = "equal"
    min_sites: int = Field(default=2, ge=1)
    clipping: Literal["fixed", "adaptive"] = "fixed"
    model: Literal["mlp", "logreg"] = "mlp"
    hidden: int = Field(default=32, ge=1, le=4096)
    experiment: str = "dpgov-federated"
    model_name: str = "dpgov-federated"
    seed: int | None = None

    @model_validator(mode="after")
    def _coherent(self) -> _Spec:
        seen: set[str] = set()
        for s in self.sites:
            if s.name in seen:
                raise ValueError(f"sites: site {s.name!r} is listed twice")
            seen.add(s.name)
        if self.clipping == "adaptive":
            raise ValueError(
                "clipping: adaptive clipping is refused: its per-round count query is a "
                "release no site ledger is charged for; use fixed"
            )
        if self.site_sample_rate is not None and self.mode != "site":
            raise ValueError(
                "site_sample_rate: client sampling is for mode 'site' (DP-FedAvg); in mode "
                "'record' every site that can afford a round trains"
            )
        if self.weights == "records":
            raise ValueError(
                "weights: 'records' would weight each site by its exact number of records, "
                "which changes when one patient is removed and is covered by no charge; use "
                "equal weights"
            )
        if self.min_sites > len(self.sites):
            raise ValueError(
                f"min_sites: {self.min_sites} is more than the {len(self.sites)} sites listed"
            )
        return self


def parse_spec(data: dict[str, Any], *, where: str = "federation") -> FederatedSpec:
    """Validate a federation mapping; one line naming what is wrong, else the spec."""
    try:
        raw = _Spec.model_validate(data)
    except ValidationError as err:
        raise UsageError(f"{where}: {describe_validation_error(err)}") from err
    sites = []
    for i, s in enumerate(raw.sites):
        names.name(s.name, argument=f"{where}: sites.{i}.name", max_length=64)
        if s.id_domain is not None:
            names.name(s.id_domain, argument=f"{where}: sites.{i}.id_domain", max_length=64)
        sites.append(SiteSpec(s.name, s.data, s.ledger_url, s.id_domain, s.source, s.contract))
    values = raw.model_dump(exclude={"sites"})
    return FederatedSpec(sites=tuple(sites), **values)


def load_spec(path: str | Path, **overrides: Any) -> FederatedSpec:
    """A federation YAML file, with ``overrides`` (the command line's flags; None = unset)
    applied before validation. Relative site data folders are read from the file's folder."""
    file = Path(path)
    where = f"federation {file}"
    data = yamlio.parse_mapping(yamlio.read_bytes(file, where=where), where=where)
    for s in data.get("sites") or []:
        for key in ("data", "source", "contract"):
            if isinstance(s, dict) and isinstance(s.get(key), str):
                folder = Path(s[key])
                if not folder.is_absolute():
                    s[key] = str((file.parent / folder).resolve())
    data.update({k: v for k, v in overrides.items() if v is not None})
    return parse_spec(data, where=where)


def spec_from_flags(sites: list[str], **options: Any) -> FederatedSpec:
    """The spec of ``dpgov federated run --site NAME=FOLDER[,ledger=URL][,domain=D] ...``."""
    out = []
    for text in sites:
        name, sep, rest = text.partition("=")
        if not sep or not rest:
            raise UsageError(f"--site {text!r}: expected NAME=FOLDER[,ledger=URL][,domain=D]")
        folder, *extra = rest.split(",")
        site: dict[str, Any] = {"name": name, "data": folder}
        for item in extra:
            key, eq, value = item.partition("=")
            if key not in ("ledger", "domain") or not eq or not value:
                raise UsageError(f"--site {text!r}: unknown option {item!r} (ledger=, domain=)")
            site["ledger_url" if key == "ledger" else "id_domain"] = value
        out.append(site)
    return parse_spec(
        {"sites": out, **{k: v for k, v in options.items() if v is not None}}, where="--site"
    )
