"""Bad input to ``dpgov federated run`` (issue 20): a site without a contract, a site whose data
fails validation, a site key mismatch, too few sites, adaptive clipping, a bad key in the YAML.
Each is one line on stderr, exit 2, and nothing is charged at any site (no site ledger holds a
reservation). Everything here fails before the first round: no Flower simulation starts.

One world per module: three covid_testing sites prepared once (and a second preparation of the
same sites under another pseudonym key), in a home of its own.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli import run_dpgov

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("federated-input")]

PATIENTS = 150


@dataclass
class Sites:
    root: Path
    home: Path
    good: dict[str, dict[str, str]]  # site name -> its federation entry
    other_key: dict[str, dict[str, str]]  # the same sites prepared under another key
    too_small: dict[str, dict[str, str]]  # 100 patients a site: dept-1's test split has no positive


def _entries(prepared: list[Any]) -> dict[str, dict[str, str]]:
    return {
        s.name: {
            "name": s.name,
            "data": str(s.path),
            "source": str(s.source),
            "contract": str(s.contract),
        }
        for s in prepared
    }


def _env(mp: pytest.MonkeyPatch, home: Path) -> None:
    mp.setenv("DPGOV_HOME", str(home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    mp.delenv("DPGOV_LEDGER_URL", raising=False)
    mp.delenv("DPGOV_LEDGER_HMAC_KEY", raising=False)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[Sites]:
    from dpgov.data.federated_cohort import prepare_sites

    root = tmp_path_factory.mktemp("federated-input")
    home = root / "dpgov-home"
    home.mkdir()
    shutil.copy(mlflow_store_template, home / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, home)
        good = prepare_sites(root / "a", sites=3, max_patients_per_site=PATIENTS)
        other = prepare_sites(
            root / "b", sites=3, max_patients_per_site=PATIENTS, key=b"another hospital key"
        )
        small = prepare_sites(root / "c", sites=3, max_patients_per_site=100)
        yield Sites(root, home, _entries(good), _entries(other), _entries(small))


@pytest.fixture
def run(sites: Sites, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``dpgov federated run ARGS`` (or with a federation written from ``sites`` and
    ``options``); (exit code, stderr lines) after checking that no site ledger holds a
    reservation."""
    _env(monkeypatch, sites.home)

    def call(
        site_list: list[dict[str, str]] | None = None, *args: str, **options: Any
    ) -> tuple[int, list[str]]:
        argv = list(args)
        if site_list is not None:
            path = sites.root / f"federation-{len(list(sites.root.glob('federation-*')))}.yaml"
            path.write_text(yaml.safe_dump({**options, "sites": site_list}, sort_keys=False))
            argv = ["-f", str(path), *argv]
        code, _out, err = run_dpgov(
            monkeypatch, capsys, "federated", "run", *argv, "--json", prefect_defaults=True
        )
        assert_nothing_charged(sites.home)
        return code, [line for line in err.splitlines() if line.strip()]

    return call


def assert_nothing_charged(home: Path) -> None:
    from dpgov.ledger import Ledger

    for db in sorted((home / "sites").glob("*/ledger.db")):
        ledger = Ledger.open(f"sqlite:///{db}")
        try:
            assert ledger.reservations() == [], db
            kinds = {e.kind for e in ledger.entries()}
        finally:
            ledger.close()
        assert not kinds & {"reservation", "commit", "release", "abort"}, (db, kinds)


def one_line(code: int, lines: list[str], *words: str) -> str:
    assert code == 2, lines
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], lines
    return lines[0]


def test_a_site_without_a_contract(sites: Sites, run: Any) -> None:
    folder = sites.root / "no-contract"
    shutil.copytree(sites.good["dept-1"]["data"], folder)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("contract")
    meta_path.write_text(json.dumps(meta))
    bare = {"name": "dept-1", "data": str(folder)}
    code, lines = run([bare, sites.good["dept-2"], sites.good["dept-3"]])
    one_line(code, lines, "site dept-1", "no data contract")


def test_a_site_whose_data_fails_validation(sites: Sites, run: Any) -> None:
    """dept-1 cut to 100 patients fails its contract's checks (Great Expectations: both
    classes must occur in train and test)."""
    code, lines = run([sites.too_small["dept-1"], sites.good["dept-2"], sites.good["dept-3"]])
    one_line(code, lines, "site dept-1", "validation of", "failed", "nothing was reserved")


def test_a_site_whose_source_was_changed(sites: Sites, run: Any) -> None:
    """A corrupted source table (ages past the contract's 120) is caught before validation:
    the prepared data was made from other data."""
    import pandas as pd

    bad = sites.root / "dept-2-corrupt.csv"
    frame = pd.read_csv(sites.good["dept-2"]["source"])
    frame.loc[frame.index[:5], "age"] = 500.0
    frame.to_csv(bad, index=False)
    corrupt = {**sites.good["dept-2"], "source": str(bad)}
    code, lines = run([sites.good["dept-1"], corrupt, sites.good["dept-3"]])
    one_line(code, lines, "site dept-2", "made from other data", "dpgov data prepare")


def test_a_site_key_mismatch(sites: Sites, run: Any) -> None:
    code, lines = run([sites.good["dept-1"], sites.good["dept-2"], sites.other_key["dept-3"]])
    line = one_line(code, lines, "site key mismatch", "dept-3", "covid-hospital")
    assert "dept-1" in line or "dept-2" in line


def test_too_few_sites(sites: Sites, run: Any) -> None:
    code, lines = run([sites.good["dept-1"], sites.good["dept-2"]], min_sites=3)
    one_line(code, lines, "min_sites", "3", "2 sites")
    code, lines = run([sites.good["dept-1"], sites.good["dept-2"]], "--min-sites", "3")
    one_line(code, lines, "min_sites")


def test_site_flags_wrong(sites: Sites, run: Any) -> None:
    code, lines = run(None, "--site", "dept-1")
    one_line(code, lines, "--site", "NAME=FOLDER")
    folder = sites.good["dept-1"]["data"]
    code, lines = run(None, "--site", f"dept-1={folder},colour=blue")
    one_line(code, lines, "--site", "colour=blue")


def test_adaptive_clipping_refused(sites: Sites, run: Any) -> None:
    code, lines = run(list(sites.good.values()), clipping="adaptive")
    one_line(code, lines, "clipping", "adaptive")


def test_a_bad_yaml_key(sites: Sites, run: Any) -> None:
    code, lines = run(list(sites.good.values()), roundz=2)
    one_line(code, lines, "roundz")
