"""The privacy unit's identity: pseudonyms keyed on (domain, id) under the deployment's key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from dpgov.data import DataParams, load_prepared, prepare
from dpgov.data.pseudonym import KEY_BYTES, fingerprint, key_path, load_key, pseudonym
from dpgov.errors import UsageError
from dpgov.testing.sources import write_tabular


@pytest.fixture
def keyless(dpgov_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DPGOV_PSEUDONYM_KEY", raising=False)
    return dpgov_home


def _prepare(data: Path, contract: Path, out: Path, dataset: str | None = None):
    result = prepare(
        data, contract, dataset=dataset, out=out, params=DataParams(seed=3), register=False
    )
    return load_prepared(result.path)


def test_the_key_file_is_created_once_with_mode_0600(keyless: Path) -> None:
    assert not key_path().exists()
    first = load_key()
    path = key_path()
    assert path.parent == keyless.resolve()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == KEY_BYTES
    again = load_key()
    assert again.key == first.key and again.fingerprint == first.fingerprint
    assert first.fingerprint == fingerprint(path.read_bytes()) != path.read_bytes().hex()
    assert "key=" not in repr(first) and first.key.hex() not in repr(first)
    assert not [p for p in keyless.iterdir() if p.name.startswith(".pseudonym")]  # no temp left


def test_a_key_file_others_may_read_is_refused(keyless: Path) -> None:
    load_key()
    key_path().chmod(0o644)
    with pytest.raises(UsageError, match=r"accessible by group or others \(mode 0644\)"):
        load_key()


def test_no_key_file_is_created_where_none_may_be(keyless: Path) -> None:
    with pytest.raises(UsageError, match="no pseudonym key: set DPGOV_PSEUDONYM_KEY"):
        load_key(create=False)
    assert not key_path().exists()


def test_the_environment_key_wins_and_is_never_written(
    keyless: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPGOV_PSEUDONYM_KEY", "the data owner's secret")
    key = load_key()
    assert key.source == "env DPGOV_PSEUDONYM_KEY" and key.key == b"the data owner's secret"
    assert not key_path().exists()


def test_one_domain_gives_one_pseudonym_across_dataset_names(keyless: Path, tmp_path) -> None:
    data, contract = write_tabular(tmp_path / "raw", 300, dataset="cohort")
    a = _prepare(data, contract, tmp_path / "a", dataset="cohort")
    b = _prepare(data, contract, tmp_path / "b", dataset="cohort-renamed")
    again = _prepare(data, contract, tmp_path / "c", dataset="cohort")
    ids = sorted(a.train["patient_id"])
    assert ids == sorted(b.train["patient_id"]) == sorted(again.train["patient_id"])
    for p in (a, b):
        pseudo = p.meta["pseudonymisation"]
        assert pseudo["domain"] == "cohort"  # the contract's dataset, not the prepared name
        assert pseudo["key_fingerprint"] == load_key().fingerprint
        assert pseudo["method"] == "keyed BLAKE2b of (domain, source id), 80 bits"
    text = (Path(a.path) / "meta.json").read_text()
    assert load_key().key.hex() not in text
    # the pseudonym of a source id is reproducible from the key and the domain
    first = data.read_text().splitlines()[1].split(",")[0]  # "P0000000"
    assert pseudonym("cohort", first) in set(a.train["patient_id"]) | set(a.test["patient_id"])


def test_a_declared_domain_keys_the_pseudonym(keyless: Path, tmp_path) -> None:
    data, contract = write_tabular(tmp_path / "raw", 300, dataset="cohort")
    plain = _prepare(data, contract, tmp_path / "plain")
    spec = yaml.safe_load(contract.read_text())
    spec["patient_id_domain"] = "mrn@hospital-a"
    other = tmp_path / "raw" / "domain.yaml"
    other.write_text(yaml.safe_dump(spec))
    declared = _prepare(data, other, tmp_path / "declared")
    assert declared.meta["pseudonymisation"]["domain"] == "mrn@hospital-a"
    assert not set(plain.train["patient_id"]) & set(declared.train["patient_id"])
    spec["patient_id_domain"] = "no spaces allowed"
    other.write_text(yaml.safe_dump(spec))
    with pytest.raises(UsageError, match="patient_id_domain 'no spaces allowed' must be"):
        _prepare(data, other, tmp_path / "bad")
