"""What a federated run is made of: its sites, its mode, and what each round charges.

Plain values shared by every part of :mod:`dpgov.federated` (spec loading, site opening,
the site ledgers, local training, the Flower engine, evaluation); nothing here imports a
heavy library.

Two privacy modes (docs/federated.md):

- ``record``: record-level DP at each site. Each round a site runs ``local_steps`` steps of
  Opacus DP-SGD (Poisson rate ``q = batch_size / n_site``, noise ``noise_multiplier``, clip
  ``clip``) and is charged ``DpSgdMechanism(σ, q, local_steps)`` on its own blocks only:
  parallel across sites (disjoint patients), sequential across rounds.
- ``site``: site-level DP (DP-FedAvg). Sites train without noise; the server clips each
  site's update to ``clip`` and adds Gaussian noise of std ``noise_multiplier · clip`` to the
  sum. Removing one patient *replaces* that site's clipped update, so a round reaches a site's
  patients as a Gaussian of sensitivity 2C (replace-one), amplified by Poisson client sampling
  at rate ``site_sample_rate`` when ``amplification`` is on (then every eligible site pays every
  round and participation stays secret), else only sampled sites pay, unamplified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Ledger
    from dpgov.policy import LoadedPolicy

Mode = Literal["record", "site"]


@dataclass(frozen=True)
class SiteSpec:
    """One hospital: its prepared data folder and its own ledger.

    ``ledger_url``: a SQLAlchemy URL (default: SQLite at ``<home>/sites/<name>/ledger.db``).
    ``id_domain``: sites of one id domain share its pseudonym key (a patient seen at two of
    them has the same pseudonym at both); default: the site's own name (no sharing).
    """

    name: str
    data: str
    ledger_url: str | None = None
    id_domain: str | None = None
    source: str | None = None  # the raw data validation reads (default: meta.json's params)
    contract: str | None = None  # its data contract (default: meta.json's params)

    @property
    def domain(self) -> str:
        return self.id_domain or self.name


@dataclass(frozen=True)
class FederatedSpec:
    """A federated run: who trains, how, and how privacy is charged."""

    sites: tuple[SiteSpec, ...]
    mode: Mode = "record"
    rounds: int = 3
    local_steps: int = 10
    batch_size: int = 64
    lr: float = 0.05
    noise_multiplier: float = 1.0
    clip: float = 1.0
    site_sample_rate: float | None = None  # site mode: Poisson sampling of sites per round
    amplification: bool = True  # with sampling: amplified charge on every eligible site
    weights: Literal["equal", "records"] = "equal"  # how the server averages site updates
    min_sites: int = 2  # the run stops when fewer sites can afford a round
    clipping: Literal["fixed", "adaptive"] = "fixed"  # adaptive is refused (uncharged count)
    model: str = "mlp"
    hidden: int = 32
    experiment: str = "dpgov-federated"
    model_name: str = "dpgov-federated"
    seed: int | None = None  # only for the non-private parts (init, splits); noise is secret


@dataclass
class OpenSite:
    """A site opened for a run (:func:`dpgov.federated.sites.open_sites`): its validated data,
    its ledger and the policy in force on it, and the training blocks this run charges."""

    spec: SiteSpec
    ledger: Ledger
    policy: LoadedPolicy  # the policy in force on the site's ledger for its dataset
    dataset: str
    data_version: str
    path: str  # the prepared folder
    blocks: list[str]  # the training blocks this run uses (and charges)
    block_patients: dict[str, int]
    block_members: dict[str, list[str]]  # pseudonyms per block
    patients: int = 0
    records: int = 0
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def domain(self) -> str:
        return self.spec.domain


@dataclass(frozen=True)
class SiteCharge:
    """What one round charges (or would charge) one site."""

    site: str
    mechanism: Any  # a registered mechanism kind (DpSgdMechanism or FedSiteMechanism)
    blocks: tuple[str, ...]
    reservation: str | None = None  # the reservation id on the site's ledger, once reserved
    refused: str | None = None  # why the site refused the round (it sits the round out)


@dataclass
class RoundRecord:
    """One round as it happened: who was eligible, sampled, refused, and what was charged."""

    round: int
    eligible: list[str]
    participants: list[str]
    refused: dict[str, str] = field(default_factory=dict)
    charges: list[SiteCharge] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
