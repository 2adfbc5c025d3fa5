"""Opening the sites of a federation: every check that can fail runs before any site is charged.

For each site, in order, and for all sites before the first round:

1. its prepared folder exists and names its data contract (a site without one is refused);
2. sites of one id domain were pseudonymised with ONE key (same fingerprint), else a patient
   seen at two of them would not be recognised as one (refused: "site key mismatch");
3. its data passes its contract (Great Expectations, :func:`ensure_validated`; a recorded
   passing validation of this exact version, contract and policy is reused);
4. its ledger opens (SQLite under ``<home>/sites/<name>/`` by default; any SQLAlchemy URL),
   records the key fingerprint (a ledger that knows another key refuses) and registers the
   site's training and test blocks with their members (idempotent);
5. the policy in force on its ledger for its dataset is what the site enforces.

Any failure is one line naming the site (exit 2), and since nothing is reserved until every
site is open, nothing is charged at any site.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgov import config
from dpgov.data.params import DataParams
from dpgov.data.preparation import block_members, register_members
from dpgov.data.prepared_data import load_prepared
from dpgov.data.test_blocks import evaluation_members
from dpgov.data.validation.ensure import ensure_validated
from dpgov.errors import DpgovError, Refused, UsageError
from dpgov.federated.types import FederatedSpec, OpenSite, SiteSpec
from dpgov.gate.in_force import policy_in_force
from dpgov.ledger import Ledger

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.data.prepared_data import PreparedData


def site_home(name: str) -> Path:
    """Where a site's embedded state lives: ``<home>/sites/<name>/``."""
    return config.home() / "sites" / name


def default_ledger_url(name: str) -> str:
    folder = site_home(name)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'ledger.db'}"


def open_sites(spec: FederatedSpec) -> list[OpenSite]:
    """Open, check and validate every site (module docstring); close what was opened when one
    fails. Raises :class:`UsageError` naming the site."""
    prepared = [_with_domain(s, _prepared(s)) for s in spec.sites]
    _check_keys(prepared)
    opened: list[OpenSite] = []
    try:
        for s, data in prepared:
            opened.append(_open_one(s, data))
    except BaseException:
        close_sites(opened)
        raise
    return opened


def close_sites(sites: Sequence[OpenSite]) -> None:
    for site in sites:
        with contextlib.suppress(Exception):  # closing must not hide the real error
            site.ledger.close()


def _prepared(s: SiteSpec) -> PreparedData:
    folder = Path(s.data)
    if not (folder / "meta.json").is_file():
        raise UsageError(f"site {s.name}: no prepared data at {folder} (no meta.json)")
    try:
        data = load_prepared(folder)
    except DpgovError as err:
        raise UsageError(f"site {s.name}: {err}") from err
    contract = (data.meta.get("contract") or {}).get("sha256")
    if not contract:
        raise UsageError(
            f"site {s.name}: prepared data {folder} names no data contract: a site trains only "
            f"on data prepared and validated under a contract"
        )
    pseudo = data.meta.get("pseudonymisation") or {}
    if not pseudo.get("key_fingerprint"):
        raise UsageError(f"site {s.name}: prepared data {folder} names no pseudonym key")
    return data


def _with_domain(s: SiteSpec, data: PreparedData) -> tuple[SiteSpec, PreparedData]:
    """The site with the id domain its data was pseudonymised in (a different one named in
    the federation is refused: its pseudonyms would not be that domain's)."""
    found = str((data.meta.get("pseudonymisation") or {}).get("domain") or data.dataset)
    if s.id_domain is not None and s.id_domain != found:
        raise UsageError(
            f"site {s.name}: id_domain {s.id_domain!r}, but its data was pseudonymised in "
            f"domain {found!r}"
        )
    return dataclasses.replace(s, id_domain=found), data


def _check_keys(prepared: Sequence[tuple[SiteSpec, PreparedData]]) -> None:
    """Sites of one id domain share its pseudonym key (and the data's own domain)."""
    by_domain: dict[str, tuple[str, str]] = {}
    for s, data in prepared:
        fp = str(data.meta["pseudonymisation"]["key_fingerprint"])
        seen = by_domain.get(s.domain)
        if seen is not None and seen[1] != fp:
            raise UsageError(
                f"site key mismatch: sites {seen[0]} and {s.name} share id domain {s.domain!r} "
                f"but were pseudonymised with different keys (fingerprints {seen[1][:12]}… and "
                f"{fp[:12]}…): a patient seen at both would not be recognised; prepare both with "
                f"the domain's key"
            )
        by_domain.setdefault(s.domain, (s.name, fp))


def _data_params(s: SiteSpec, meta: dict[str, Any]) -> DataParams:
    """What validation reads: the site's ``source``/``contract`` if given, else the data
    params recorded when its folder was prepared."""
    recorded = meta.get("params") or {}
    known = set(DataParams.model_fields)
    values = {k: v for k, v in recorded.items() if k in known} if isinstance(recorded, dict) else {}
    if s.source is not None:
        values["source"] = s.source
    if s.contract is not None:
        values["contract"] = s.contract
    try:
        return DataParams(**values)
    except Exception as err:
        raise UsageError(f"site {s.name}: its data params do not validate: {err}") from err


def _open_one(s: SiteSpec, data: PreparedData) -> OpenSite:
    meta = data.meta
    dataset, version = str(data.dataset), str(data.data_version)
    url = s.ledger_url or default_ledger_url(s.name)
    try:
        ledger = Ledger.open(url)
    except DpgovError as err:
        raise UsageError(f"site {s.name}: ledger {url}: {err}") from err
    try:
        policy = policy_in_force(ledger, dataset)
        try:
            validated = ensure_validated(
                s.data,
                data_params=_data_params(s, meta),
                policy=policy,
                out=site_home(s.name) / "validation" / dataset,
            )
        except Refused as err:  # a site whose data fails its contract: nobody trains
            raise UsageError(f"site {s.name}: {err}") from err
        except UsageError as err:
            raise UsageError(f"site {s.name}: {err}") from err
        members = block_members(data.train)
        tests = evaluation_members(data.test)
        try:  # as `dpgov data prepare` registers: the key's fingerprint first, then the blocks
            register_members(
                dataset,
                {**members, **tests},
                version,
                url,
                domain=s.domain,
                key_fingerprint=str(meta["pseudonymisation"]["key_fingerprint"]),
                test_blocks=frozenset(tests),
            )
        except UsageError as err:
            raise UsageError(f"site {s.name}: {err}") from err
    except BaseException:
        ledger.close()
        raise
    patients = len({p for ids in members.values() for p in ids})
    return OpenSite(
        spec=s,
        ledger=ledger,
        policy=policy,
        dataset=dataset,
        data_version=version,
        path=str(s.data),
        blocks=sorted(members),
        block_patients={b: len(ids) for b, ids in members.items()},
        block_members=members,
        patients=patients,
        records=len(data.train),
        validation=validated.to_dict(),
    )
