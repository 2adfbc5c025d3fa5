"""The federation file's rules and the gate per site, on real ledgers (no Flower run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpgov.accounting import DpSgdMechanism
from dpgov.errors import UsageError
from dpgov.federated import gate as fgate
from dpgov.federated.engine import planned_mechanism, record_rate
from dpgov.federated.ledgers import SiteLedgers
from dpgov.federated.spec import load_spec, parse_spec, spec_from_flags
from dpgov.federated.types import SiteCharge
from dpgov.gate.standing import ApprovalRecord
from tests.unit._federated_fixtures import ids, make_site

SITES = [{"name": "a", "data": "/x/a"}, {"name": "b", "data": "/x/b"}]


def test_defaults_and_round_trip_of_flags() -> None:
    spec = parse_spec({"sites": SITES})
    assert spec.mode == "record" and spec.min_sites == 2 and spec.clipping == "fixed"
    flags = spec_from_flags(
        ["a=/x/a,ledger=sqlite:///a.db", "b=/x/b,domain=hospital"], rounds=4, mode="site"
    )
    assert flags.rounds == 4 and flags.mode == "site"
    assert flags.sites[0].ledger_url == "sqlite:///a.db"
    assert flags.sites[1].domain == "hospital" and flags.sites[0].domain == "a"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sites": SITES, "clipping": "adaptive"}, "adaptive clipping is refused"),
        ({"sites": SITES, "min_sites": 3}, "more than the 2 sites"),
        ({"sites": [SITES[0], SITES[0]]}, "listed twice"),
        ({"sites": SITES, "site_sample_rate": 0.5}, "client sampling is for mode 'site'"),
        ({"sites": SITES, "weights": "records"}, "exact number of records"),
        ({"sites": SITES, "rounds": 0}, "rounds"),
        ({"sites": SITES, "surprise": 1}, "surprise: unknown key"),
        ({"sites": SITES, "noise_multiplier": float("nan")}, "noise_multiplier"),
    ],
)
def test_bad_federations_are_one_line(data: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        parse_spec(data)
    assert "\n" not in str(err.value)


def test_bad_site_flags() -> None:
    with pytest.raises(UsageError, match="expected NAME=FOLDER"):
        spec_from_flags(["a"])
    with pytest.raises(UsageError, match="unknown option"):
        spec_from_flags(["a=/x,colour=red", "b=/y"])


def test_relative_site_paths_are_read_from_the_file(tmp_path: Path) -> None:
    f = tmp_path / "fed.yaml"
    f.write_text("sites:\n  - {name: a, data: s/a}\n  - {name: b, data: s/b}\nrounds: 2\n")
    spec = load_spec(f, rounds=5)
    assert spec.sites[0].data == str((tmp_path / "s" / "a").resolve())
    assert spec.rounds == 5  # the command line's flag wins


def test_record_rate_counts_patients_when_they_hold_several_records(tmp_path: Path) -> None:
    site = make_site(tmp_path, "a", {"b1": ids(0, 100)}, limit=8.0)
    try:
        spec = parse_spec({"sites": SITES, "batch_size": 10})
        site.patients, site.records = 100, 100
        assert record_rate(site, spec) == pytest.approx(0.1)
        site.records = 250  # several records per patient: the unit is the patient
        assert record_rate(site, spec) == pytest.approx(0.1)
        m = planned_mechanism(site, spec)
        assert m == DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.1, steps=spec.local_steps)
        site.patients = site.records = 5  # fewer units than the batch: q is capped at 1
        assert record_rate(site, spec) == 1.0
    finally:
        site.ledger.close()


def test_site_gap_names_the_worst_and_smallest_site() -> None:
    evals = {
        "big": {"auroc": 0.80, "fnr": 0.10, "train_patients": 900},
        "mid": {"auroc": 0.75, "fnr": 0.20, "train_patients": 400},
        "small": {"auroc": 0.55, "fnr": 0.50, "train_patients": 50},
        "none": {"auroc": None, "fnr": None, "train_patients": 10},
    }
    g = fgate.site_gap(evals, "auroc")
    assert g["gap"] == pytest.approx(0.25) and g["worst"] == "small"
    assert g["smallest"] == "none" and not g["worst_is_smallest"]  # 'none' cannot be judged
    assert g["judged"] == 3
    f = fgate.site_gap(evals, "fnr")
    assert f["worst"] == "small" and f["gap"] == pytest.approx(0.40)
    assert fgate.site_gap({"a": {"auroc": 0.7}}, "auroc")["gap"] is None


def _decide(site, charges, evaluation, gaps, approvals=()):
    return fgate.decide_site(
        site,
        model="m",
        version="1",
        author="alice",
        charges=charges,
        evaluation=evaluation,
        site_gaps=gaps,
        noise_source="os_entropy",
        approvals=approvals,
    )


def test_a_site_decision_reads_its_own_ledger(tmp_path: Path) -> None:
    site = make_site(tmp_path, "a", {"b1": ids(0, 200)}, limit=8.0)
    try:
        ledgers = SiteLedgers([site], run_tag="t")
        mech = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.1, steps=10)
        charges = ledgers.reserve_round(1, {"a": mech})
        assert charges["a"].reservation is not None and not charges["a"].refused
        evaluation = {
            "auroc": 0.9,
            "gaps": [
                {"attribute": "sex", "metric": "auroc", "gap": 0.3, "groups_judged": 2},
                {"attribute": "age_band", "metric": "fnr", "gap": 0.05, "groups_judged": 1},
            ],
        }
        gaps = [fgate.site_gap({"a": {"auroc": 0.9}, "b": {"auroc": 0.85}}, "auroc")]
        pending = _decide(site, list(charges.values()), evaluation, gaps)
        by = {c.name: c for c in pending.checks}
        assert not by["charges_committed"].passed  # reserved, not yet committed
        ledgers.commit_round(charges)
        d = _decide(site, list(charges.values()), evaluation, gaps)
        by = {c.name: c for c in d.checks}
        assert by["ledger_chain"].passed and by["charges_committed"].passed
        assert by["cumulative_epsilon"].observed > 0 and by["cumulative_epsilon"].passed
        assert by["site_auroc"].passed
        assert not by["auroc_gap.sex"].passed  # 0.3 > the packaged 0.15
        assert by["fnr_gap.age_band"].passed is False  # one subgroup: not judgeable, required
        assert by["auroc_gap.site"].passed and by["auroc_gap.site"].observed == pytest.approx(0.05)
        assert not by["approvals"].passed and not d.allowed
        ok = ApprovalRecord(kind="approval", by="bob", text="", seq=99, identity="bob")
        approved = _decide(site, list(charges.values()), {"auroc": 0.9}, gaps, [ok])
        assert {c.name: c for c in approved.checks}["approvals"].passed
        own = ApprovalRecord(kind="approval", by="alice", text="", seq=100, identity="alice")
        authored = _decide(site, list(charges.values()), {"auroc": 0.9}, gaps, [own])
        assert not {c.name: c for c in authored.checks}["approvals"].passed  # the author
        recorded = fgate.record_decisions([site], [approved], model="m", version="1", run_id="r")
        entry = site.ledger.entries(kind=fgate.ENTRY_KIND)[-1]
        assert entry.seq == recorded[0].ledger_seq and entry.payload["site"] == "a"
        assert fgate.gate_table(recorded)["allowed"] == recorded[0].allowed
    finally:
        site.ledger.close()


def test_a_site_over_its_budget_is_blocked(tmp_path: Path) -> None:
    site = make_site(tmp_path, "a", {"b1": ids(0, 50)}, limit=0.5)
    try:
        ledgers = SiteLedgers([site], run_tag="t")
        big = DpSgdMechanism(noise_multiplier=0.8, sample_rate=0.5, steps=50)
        charges = ledgers.reserve_round(1, {"a": big})
        assert charges["a"].refused  # the site cannot afford it: nothing charged
        d = _decide(site, [SiteCharge("a", big, ("b1",))], {"auroc": 0.9}, [])
        by = {c.name: c for c in d.checks}
        assert by["cumulative_epsilon"].observed == 0 and by["cumulative_epsilon"].passed
    finally:
        site.ledger.close()
