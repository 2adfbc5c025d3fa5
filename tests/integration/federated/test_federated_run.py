"""A real federated run (issue 20): Flower's simulation engine over three covid_testing sites,
each with its own SQLite ledger, policy in force, blocks and members; then MLflow, the gate per
site, approval on every site's ledger and promotion.

One record-level world per module (its own DPGOV_HOME and MLflow store, set as the ``dpgov_home``
fixture does), and one site-level run with Poisson site sampling and amplification. Flower
simulations cost Ray's start-up (15-40 s here), so each world runs once and every test reads it.

Why dept-1 gets its own id domain: every pair of covid sites shares patients, and a shared
patient over the limit of ANY site holding them makes every site holding them refuse the round
(docs/federated.md). A site can sit a round out while the others go on only if it shares no
patient, so dept-1 is prepared from its own source table under a contract naming id domain
``covid-dept-1`` (a department keeping its own patient index). dept-2 and dept-3 share the
hospital's domain and their shared patients.

The budgets are set from the run's own mechanisms, computed here with an independent reference
(``tests.filter_reference``: dp_accounting's RdpAccountant, the filter written out again):

- dept-1 may afford one round (between one and two of its rounds): it trains round 1 and sits
  round 2 out, refused by its own ledger;
- dept-2 and dept-3 may afford two rounds of their shared patients (each charged at both
  ledgers: between two and three rounds of both sites' mechanisms): round 3 is refused at both
  by the cross-ledger check, fewer than ``min_sites`` can train, and the run stops there.
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
from tests.filter_reference import filter_eps

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("federated-run")]

SIGMA = 2.0
BATCH = 32
STEPS = 3
DELTA = 1e-5
PATIENTS = 150  # per site (prepare_sites' test-size option)
OWN_DOMAIN = "covid-dept-1"
SHARED_DOMAIN = "covid-hospital"
SITE_MODE_SIGMA = 4.0
SITE_MODE_RATE = 0.5
LENIENT: dict[str, dict[str, Any]] = {
    # the gate's utility and fairness lines pass on tiny test splits; approvals stay required
    "utility": {"min_auroc": None, "max_calibration_error": None},
    "fairness": {"max_auroc_gap": 1.0, "max_fnr_gap": 1.0, "require_judgeable": False},
    "approvals": {"required": 1, "allow_author": True},
}


@dataclass
class World:
    root: Path
    home: Path
    federation: Path
    spec: Any
    summary: Any  # FederatedSummary
    rounds: list[Any]  # RoundRecord, as on_round saw them
    mechanisms: dict[str, Any]  # site -> the DpSgdMechanism one round charges it
    limits: dict[str, float]
    shared: set[str]  # pseudonyms in the training blocks of both dept-2 and dept-3

    def url(self, site: str) -> str:
        return f"sqlite:///{self.home / 'sites' / site / 'ledger.db'}"


def _env(mp: pytest.MonkeyPatch, home: Path) -> None:
    mp.setenv("DPGOV_HOME", str(home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    mp.delenv("DPGOV_LEDGER_URL", raising=False)
    mp.delenv("DPGOV_LEDGER_HMAC_KEY", raising=False)
    mp.delenv("DPGOV_ACTOR", raising=False)


def _units(folder: Path) -> tuple[int, int, set[str]]:
    """(training patients, training records, their pseudonyms) of a prepared site."""
    from dpgov.data.preparation import block_members
    from dpgov.data.prepared_data import load_prepared

    data = load_prepared(folder)
    ids = {p for members in block_members(data.train).values() for p in members}
    return len(ids), len(data.train), ids


def _mechanism(folder: Path) -> Any:
    """What one record-level round charges a site, from its data (as engine.record_rate: the
    privacy unit is the patient where a patient holds several training records)."""
    from dpgov.accounting import DpSgdMechanism

    patients, records, _ = _units(folder)
    units = patients if records > patients else records
    return DpSgdMechanism(noise_multiplier=SIGMA, sample_rate=min(1.0, BATCH / units), steps=STEPS)


def _own_domain_site(root: Path, site: Any) -> Path:
    """dept-1 prepared from its own source table under the same contract but id domain
    ``covid-dept-1`` (``dpgov data prepare``'s library call; nothing registered)."""
    from dpgov.data import DataParams, prepare

    contract = yaml.safe_load(Path(site.contract).read_text())
    contract["patient_id_domain"] = OWN_DOMAIN
    path = root / "contracts" / "covid_testing-own.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(contract, sort_keys=False))
    out = root / "dept-1-own"
    params = DataParams(
        dataset=site.dataset, source=str(site.source), contract=str(path), seed=0,
        test_fraction=0.2,
    )  # fmt: skip
    prepare(site.source, path, dataset=site.dataset, out=out, params=params, register=False)
    return out


def _put_policy(home: Path, site: str, limit: float, root: Path) -> None:
    from dpgov.ledger import Ledger
    from dpgov.testing.policies import put_in_force, write_policy

    policy = write_policy(
        root / f"policy-{site}.yaml",
        budget={"epsilon_per_block": limit, "delta": DELTA, "composition": "adaptive"},
        **LENIENT,
    )
    folder = home / "sites" / site
    folder.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(f"sqlite:///{folder / 'ledger.db'}")
    try:
        put_in_force(policy, ledger=ledger, reason="federated integration test budget")
    finally:
        ledger.close()


def _federation(path: Path, sites: list[dict[str, str]], **options: Any) -> Path:
    path.write_text(yaml.safe_dump({**options, "sites": sites}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path) -> Iterator[World]:
    from dpgov.data.federated_cohort import prepare_sites
    from dpgov.federated.run import run_federated
    from dpgov.federated.spec import load_spec

    root = tmp_path_factory.mktemp("federated-run")
    home = root / "dpgov-home"
    home.mkdir()
    shutil.copy(mlflow_store_template, home / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, home)
        prepared = prepare_sites(
            root / "sites", source="covid_testing", sites=3, max_patients_per_site=PATIENTS
        )
        folders = {s.name: Path(s.path) for s in prepared}
        folders["dept-1"] = _own_domain_site(root, prepared[0])
        mechs = {name: _mechanism(folder) for name, folder in folders.items()}
        one, two = (filter_eps([mechs["dept-1"]] * k, DELTA) for k in (1, 2))
        pair = [mechs["dept-2"], mechs["dept-3"]]
        shared2, shared3 = (filter_eps(pair * k, DELTA) for k in (2, 3))
        limits = {
            "dept-1": (one + two) / 2,
            "dept-2": (shared2 + shared3) / 2,
            "dept-3": (shared2 + shared3) / 2,
        }
        assert one < limits["dept-1"] < two and shared2 < limits["dept-2"] < shared3
        for name, limit in limits.items():
            _put_policy(home, name, limit, root)
        shared = _units(folders["dept-2"])[2] & _units(folders["dept-3"])[2]
        sites = []
        for s in prepared:
            folder = folders[s.name]
            contract = root / "contracts" / "covid_testing-own.yaml"
            sites.append(
                {
                    "name": s.name,
                    "data": str(folder),
                    "source": str(s.source),
                    "contract": str(contract if s.name == "dept-1" else s.contract),
                }
            )
        federation = _federation(
            root / "federation.yaml",
            sites,
            mode="record",
            rounds=3,
            local_steps=STEPS,
            batch_size=BATCH,
            noise_multiplier=SIGMA,
            clip=1.0,
            min_sites=2,
            hidden=8,
            seed=0,
            experiment="fed-test",
            model_name="fed-test",
        )
        spec = load_spec(federation)
        seen: list[Any] = []
        summary = run_federated(spec, on_round=seen.append)
        yield World(root, home, federation, spec, summary, seen, mechs, limits, shared)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    _env(monkeypatch, world.home)
    monkeypatch.setenv("COLUMNS", "200")

    def call(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args, prefect_defaults=True)

    return call


def _ledger(world: World, site: str) -> Any:
    from dpgov.ledger import Ledger

    return Ledger.open(world.url(site))


def _site(world: World, name: str) -> dict[str, Any]:
    return next(s for s in world.summary.sites if s["site"] == name)


# ---------------------------------------------------------------------------- the rounds
def test_rounds_sit_out_and_stop(world: World) -> None:
    """dept-1 trains round 1 and sits round 2 out (its own ledger refuses); dept-2 and dept-3
    train rounds 1-2; round 3 both refuse for their shared patients and the run stops."""
    log = {r["round"]: r for r in world.summary.round_log}
    assert sorted(log) == [1, 2, 3]
    assert sorted(log[1]["participants"]) == ["dept-1", "dept-2", "dept-3"]
    assert sorted(log[2]["participants"]) == ["dept-2", "dept-3"]
    assert list(log[2]["refused"]) == ["dept-1"]
    assert "dept-1" not in log[3]["eligible"]  # its budget does not come back
    assert log[3]["participants"] == [] and log[3]["charged"] == []
    assert sorted(log[3]["refused"]) == ["dept-2", "dept-3"]
    assert world.summary.rounds == 2 and world.summary.rounds_planned == 3
    assert world.summary.stopped is not None and "round 3" in world.summary.stopped
    assert "min_sites 2" in world.summary.stopped
    assert world.summary.warnings == [world.summary.stopped]


def test_shared_patients_refused_by_the_composition_across_both_ledgers(world: World) -> None:
    """Round 3's refusal counts exactly the shared patients and states the ε of their charges
    on BOTH ledgers plus the round planned at both (the independent reference)."""
    assert world.shared, "the world needs patients held at dept-2 and dept-3"
    pair = [world.mechanisms["dept-2"], world.mechanisms["dept-3"]]
    expected = filter_eps(pair * 3, DELTA)
    log = {r["round"]: r for r in world.summary.round_log}
    for site in ("dept-2", "dept-3"):
        reason = log[3]["refused"][site]
        n = len(world.shared)
        assert reason.startswith(f"{n} patient{'s' if n > 1 else ''} of this site, shared")
        assert f"'{SHARED_DOMAIN}'" in reason
        figure = float(reason.split("up to ε=")[1].split(")")[0])
        assert figure == pytest.approx(expected, abs=1e-4)
        assert figure > world.limits[site]
    dept1 = log[2]["refused"]["dept-1"]
    assert "shared" not in dept1  # dept-1's own ledger refused it


def test_shared_patient_charged_at_both_ledgers(world: World) -> None:
    """A patient with one pseudonym at dept-2 and dept-3 carries both sites' two committed
    rounds, each on its own ledger; a patient only at dept-2 is unknown to dept-3's."""
    patient = sorted(world.shared)[0]
    for site in ("dept-2", "dept-3"):
        ledger = _ledger(world, site)
        try:
            history = ledger.patient_history(patient, domain=SHARED_DOMAIN, actor="tester")
        finally:
            ledger.close()
        assert history is not None
        active = {c.reservation for c in history.charges if c.status == "committed"}
        assert active == set(_site(world, site)["reservations"])
        assert history.epsilon == pytest.approx(
            filter_eps([world.mechanisms[site]] * 2, DELTA), rel=1e-6
        )


def test_each_ledger_holds_exactly_its_committed_rounds(world: World) -> None:
    """Per site: the run's reservations, committed, on that site's blocks only, each charging
    that site's mechanism; nothing reserved elsewhere or left open; ε as the reference."""
    expected_rounds = {"dept-1": 1, "dept-2": 2, "dept-3": 2}
    every = set()
    for name, rounds in expected_rounds.items():
        row = _site(world, name)
        ledger = _ledger(world, name)
        try:
            held = ledger.reservations()
            blocks = {
                b.block for b in ledger.blocks(row["dataset"]) if not b.block.startswith("test")
            }
        finally:
            ledger.close()
        assert len(row["reservations"]) == rounds == row["rounds_charged"]
        assert {r.id for r in held} == set(row["reservations"])
        every |= {r.id for r in held}
        for r in held:
            assert r.status == "committed"
            assert r.dataset == row["dataset"]
            assert set(r.blocks) == blocks  # all of this site's training blocks, no test block
            assert r.mechanism.noise_multiplier == SIGMA
            assert r.mechanism.sample_rate == pytest.approx(world.mechanisms[name].sample_rate)
            assert r.mechanism.steps == STEPS
            assert r.run_id == world.summary.run_id  # the federation's MLflow run
        reference = filter_eps([world.mechanisms[name]] * rounds, DELTA)
        assert row["epsilon_spent"] == pytest.approx(reference, rel=1e-6)
        assert row["epsilon_spent"] <= row["epsilon_limit"] == pytest.approx(world.limits[name])
    assert len(every) == 5  # no reservation id at two ledgers


def _audit(world: World, cli: Any, monkeypatch: pytest.MonkeyPatch, site: str) -> dict[str, Any]:
    monkeypatch.setenv("DPGOV_LEDGER_URL", world.url(site))
    _code, out, _err = cli("audit", "--json")
    report: dict[str, Any] = json.loads(out)
    return report


NO_DVC = "data_version_unknown"  # this world's prepared folders are not in a DVC repository
UNANCHORED = "unanchored_commits"


def test_each_site_ledger_audits_clean(world: World, cli: Any, monkeypatch: pytest.MonkeyPatch):
    """``dpgov audit`` on each site's ledger URL: chain, recomputed budgets, membership,
    reservations against the federation's MLflow run, nothing pending."""
    for site in ("dept-1", "dept-2", "dept-3"):
        report = _audit(world, cli, monkeypatch, site)
        found = [f for f in report["findings"] if f["kind"] != NO_DVC]
        assert found == [], (site, found)


def test_site_ledger_commits_are_anchored(world: World, cli: Any, monkeypatch: pytest.MonkeyPatch):
    for site in ("dept-1", "dept-2", "dept-3"):
        report = _audit(world, cli, monkeypatch, site)
        assert [f for f in report["findings"] if f["kind"] == UNANCHORED] == [], site


# ---------------------------------------------------------------------------- MLflow
def test_mlflow_run_and_version_carry_every_site(world: World) -> None:
    from mlflow import MlflowClient

    from dpgov.tracking import runs

    s = world.summary
    client = MlflowClient(tracking_uri=f"sqlite:///{world.home / 'mlflow.db'}")
    assert s.run_id is not None and s.model_version is not None
    run_tags = client.get_run(s.run_id).data.tags
    version_tags = client.get_model_version(s.model_name, s.model_version).tags
    for row in s.sites:
        for tags in (run_tags, version_tags):
            assert tags[f"dpgov.site.{row['site']}.data_version"] == row["data_version"]
            assert float(tags[f"dpgov.site.{row['site']}.epsilon"]) == pytest.approx(
                row["epsilon_spent"], rel=1e-5
            )
    assert version_tags["dpgov.federated"] == "true"
    assert version_tags["dpgov.gate.allowed"] == "false"  # no approval yet
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{world.home / 'mlflow.db'}")
        record = runs.read_json(s.run_id, "federated/charges.json")
    assert sorted(record["sites"]) == ["dept-1", "dept-2", "dept-3"]
    for row in s.sites:
        charges = record["sites"][row["site"]]["charges"]
        assert [c["reservation"] for c in charges] == row["reservations"]
        assert all(c["mechanism"]["noise_multiplier"] == SIGMA for c in charges)
        assert record["sites"][row["site"]]["data_version"] == row["data_version"]


# ---------------------------------------------------------------------------- gate
def test_demo_json_shape(world: World) -> None:
    data = json.loads(json.dumps(world.summary.to_dict()))
    assert data["rounds"] == 2
    assert isinstance(data["gate"], dict) and "allowed" in data["gate"]
    for row in data["sites"]:
        assert isinstance(row["site"], str)
        assert isinstance(row["patients"], int) and row["patients"] > 0
        assert isinstance(row["epsilon_spent"], float)
    assert [r["site"] for r in data["sites"]] == ["dept-1", "dept-2", "dept-3"]
    assert data["privacy"]["unit"] == "patient"


def test_gate_per_site_approve_and_promote(world: World, cli: Any) -> None:
    """One decision per site; only approvals fail; promotion refused (exit 1) until every site
    has approved on its own ledger, then allowed and the alias moves."""
    s = world.summary
    table = s.gate["sites"]
    assert [d["site"] for d in table] == ["dept-1", "dept-2", "dept-3"]
    assert all(d["failing"] == ["approvals"] for d in table), table
    assert s.gate["allowed"] is False
    model, version, fed = s.model_name, str(s.model_version), str(world.federation)

    code, out, err = cli("federated", "gate", model, version, "-f", fed, "--promote", "--json")
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err  # one line, no progress bar
    assert "not promoted: the gate blocks at dept-1, dept-2, dept-3" in lines[0]

    code, out, err = cli(
        "federated", "approve", model, version, "-f", fed, "--note", "ok", "--json"
    )
    assert code == 0, err
    gate = json.loads(out)
    assert gate["allowed"] is True
    assert all(d["allowed"] and not d["failing"] for d in gate["sites"])
    for site in ("dept-1", "dept-2", "dept-3"):
        ledger = _ledger(world, site)
        try:
            approvals = ledger.entries(kind="federated_approval")
        finally:
            ledger.close()
        assert [e.payload["version"] for e in approvals] == [version]

    code, out, err = cli("federated", "gate", model, version, "-f", fed, "--promote", "--json")
    assert code == 0, err
    assert json.loads(out)["promotion"]["version"] == version


# ---------------------------------------------------------------------------- refused
def test_first_round_refused_exit_1_nothing_charged(world: World, cli: Any) -> None:
    """The same sites again, through ``dpgov federated run`` (the Prefect flow), in site mode
    with Poisson site sampling and amplification (``--mode site --site-sample-rate 0.5``: every
    eligible site reserves the amplified round, ε 5.8 alone at σ 2): no site can afford round 1
    (dept-1's own ledger; dept-2 and dept-3's shared patients), so the run is refused, exit 1,
    one line, and no site ledger gains a reservation. Runs last: it reads the world's ledgers
    after every other test."""
    before = {}
    for site in ("dept-1", "dept-2", "dept-3"):
        ledger = _ledger(world, site)
        try:
            before[site] = [(r.id, r.status) for r in ledger.reservations()]
        finally:
            ledger.close()
    code, _out, err = cli(
        "federated", "run", "-f", str(world.federation), "--mode", "site",
        "--site-sample-rate", "0.5", "--json",
    )  # fmt: skip
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no round could run" in lines[0], err
    assert "nothing was charged at any site" in lines[0]
    for site in ("dept-1", "dept-2", "dept-3"):
        ledger = _ledger(world, site)
        try:
            assert [(r.id, r.status) for r in ledger.reservations()] == before[site]
        finally:
            ledger.close()
