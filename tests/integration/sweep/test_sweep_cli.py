"""``dpgov sweep`` end to end: the dry run charges nothing and reports the composed cost, an
unaffordable sweep is refused whole, and a real sweep charges one reservation per trial and
logs a parent run with one child per trial plus the reference."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Run = Callable[..., tuple[int, str, str]]


def _mechanism(t: dict[str, Any]) -> Any:
    from dpgov.accounting import DpSgdMechanism

    return DpSgdMechanism(
        noise_multiplier=t["noise_multiplier"], sample_rate=t["sample_rate"], steps=t["steps"]
    )


def _ledger_and_runs(experiment: str = "sweep-test") -> tuple[int, int]:
    """(ledger entries, MLflow runs of the experiment) in the current home."""
    from mlflow import MlflowClient

    from dpgov import config
    from dpgov.ledger import Ledger

    entries = len(Ledger.open().entries())
    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return entries, len(runs)


def test_dry_run_charges_nothing_and_reports_the_composition(
    home: Path, data: Any, params_file: Callable[..., Path], dpgov: Run
) -> None:
    from dpgov.accounting import DpSgdMechanism, epsilon
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from tests.filter_reference import filter_eps

    # block 2001 already spent something (a run outside the sweep); 2002 nothing
    budget = load_policy(None).policy.budget
    ledger = Ledger.open()
    for b, n in data.meta["blocks"].items():
        ledger.add_block(dataset="synth", block=b, patients=n)
    prior = DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.1, steps=20)
    r = ledger.reserve(dataset="synth", blocks=["2001"], mechanism=prior, budget=budget)
    ledger.commit(r.id)
    before = _ledger_and_runs()

    code, out, err = dpgov(
        "sweep",
        "--epsilons",
        "1,3",
        "--seeds",
        "2",
        "--dry-run",
        "--json",
        "--params",
        str(params_file()),
    )

    assert code == 0, err
    plan = json.loads(out)
    assert plan["dry_run"] is True and plan["charged"] is False
    assert _ledger_and_runs() == before  # nothing charged, no run opened
    assert not (home / "sweeps").exists()
    trials = [_mechanism(t) for t in plan["trials"]]
    assert [(t["epsilon"], t["seed"]) for t in plan["trials"]] == [(1, 0), (3, 0), (1, 1), (3, 1)]
    for t in plan["trials"]:  # each σ calibrated for its own ε, alone
        assert t["epsilon_run"] <= t["epsilon"]
        assert epsilon([_mechanism(t)], delta=1e-5) == pytest.approx(t["epsilon_run"], rel=1e-9)
    cost = {c["block"]: c for c in plan["blocks_cost"]}
    assert cost["2001"]["charges"] == 1 and cost["2002"]["charges"] == 0
    # costed under the rule the ledger enforces: the RDP filter (budget.composition: adaptive)
    assert cost["2001"]["epsilon_spent"] == pytest.approx(filter_eps([prior], 1e-5), rel=1e-9)
    assert cost["2001"]["epsilon_after"] == pytest.approx(
        filter_eps([prior, *trials], 1e-5), rel=1e-9
    )
    assert cost["2002"]["epsilon_after"] == pytest.approx(filter_eps(trials, 1e-5), rel=1e-9)
    assert plan["epsilon_sweep"] == pytest.approx(filter_eps(trials, 1e-5), rel=1e-9)
    # composed tightly, well below the naive sum of the trials and the prior charge
    naive = sum(t["epsilon_run"] for t in plan["trials"])
    assert plan["epsilon_sum_of_trials"] == pytest.approx(naive)
    assert cost["2001"]["epsilon_after"] < cost["2001"]["epsilon_spent"] + naive - 1.0
    assert all(c["fits"] for c in cost.values())
    # the block's own ledger status agrees with what the dry run says it spent
    status = ledger.block_status("synth", "2001", budget)
    assert status.epsilon_spent == pytest.approx(cost["2001"]["epsilon_spent"], rel=1e-6)


def test_sweep_over_budget_is_refused_whole_and_charges_nothing(
    home: Path, params_file: Callable[..., Path], write_policy: Callable[..., Path], dpgov: Run
) -> None:
    # 1 and 3 compose to ε ≈ 3.1 on these blocks; the policy allows 3.0 per block
    policy = write_policy(epsilon_per_block=3.0)
    args = ["--epsilons", "1,3", "--params", str(params_file())]

    code, out, err = dpgov("sweep", *args, "--dry-run", "--policy", str(policy))  # what-if
    assert code == 1
    assert "OVER" in out
    assert err.startswith("error: sweep refused:") and "nothing was charged" in err
    assert _ledger_and_runs() == (0, 0)

    from dpgov.testing.policies import put_in_force

    put_in_force(policy)  # a sweep that charges enforces the policy in force
    code, out, err = dpgov("sweep", *args)
    assert code == 1
    assert err.count("\n") == 1 and "over the limit 3" in err and "nothing was charged" in err
    assert _ledger_and_runs() == (1, 0)  # the policy_set entry only
    assert not (home / "sweeps").exists()


def test_small_sweep_charges_one_reservation_per_trial_and_nests_its_runs(
    home: Path, params_file: Callable[..., Path], dpgov: Run
) -> None:
    from mlflow import MlflowClient

    from dpgov import config
    from dpgov.accounting import epsilon
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.tracking import sweep_runs
    from tests.filter_reference import filter_eps

    code, out, err = dpgov(
        "sweep", "--epsilons", "3,1", "--seeds", "2", "--json", "--params", str(params_file())
    )

    assert code == 0, err
    result = json.loads(out)
    assert result["complete"] and result["stopped"] is None
    assert result["trials_run"] == [1, 2, 3, 4] and result["trials_not_run"] == []

    # the ledger: exactly one reservation per trial, each committed in full
    ledger = Ledger.open()
    reservations = ledger.reservations()
    assert len(reservations) == 4
    assert {r.status for r in reservations} == {"committed"}
    assert sorted(r.id for r in reservations) == sorted(c["reservation"] for c in result["charged"])
    planned = [_mechanism(t) for t in result["plan"]["trials"]]
    assert sorted(str(r.mechanism) for r in reservations) == sorted(str(m) for m in planned)
    budget = load_policy(None).policy.budget
    for block in ("2001", "2002"):
        status = ledger.block_status("synth", block, budget)
        assert status.charges == 4
        assert status.epsilon_spent_fixed == pytest.approx(epsilon(planned, delta=1e-5), rel=1e-3)
        assert status.epsilon_spent == pytest.approx(filter_eps(planned, 1e-5), rel=1e-9)
        assert result["block_epsilon"][block] == pytest.approx(status.epsilon_spent)
    assert len(ledger.entries("reservation")) == 4 and len(ledger.entries("commit")) == 4

    # MLflow: a finished parent with four trials and the reference as children
    parent = sweep_runs.find_sweep(result["sweep_id"], "sweep-test")
    assert parent is not None and parent["run_id"] == result["parent_run_id"]
    assert parent["status"] == "FINISHED"
    assert parent["artifacts"] == ["sweep"]
    children = sweep_runs.children(result["parent_run_id"])
    assert len(children) == 5
    by_trial = {c["tags"]["dpgov.sweep.trial"]: c for c in children}
    assert set(by_trial) == {"1", "2", "3", "4", "reference"}
    for t in result["trials"]:
        child = by_trial[str(t["trial"])]
        assert child["run_id"] == t["run_id"] and child["status"] == "FINISHED"
        assert child["tags"]["dpgov.reservation"] == t["reservation"]
        assert child["tags"]["dpgov.status"] == "study"
        assert float(child["params"]["target_epsilon"]) == t["epsilon"]
        assert "model" not in child["artifacts"]  # a study: no model logged
    assert by_trial["reference"]["tags"]["dpgov.private"] == "false"
    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri())
    assert client.search_registered_models() == []  # no release candidates
    artifacts = {a.path for a in client.list_artifacts(result["parent_run_id"], "sweep")}
    assert artifacts == {
        "sweep/summary.csv",
        "sweep/trials.csv",
        "sweep/sweep.json",
        "sweep/tradeoff.png",
    }

    # the table and plot on disk under $DPGOV_HOME/sweeps/<id>/
    folder = home / "sweeps" / result["sweep_id"]
    assert Path(result["folder"]) == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "summary.csv",
        "sweep.json",
        "tradeoff.png",
        "trials.csv",
    ]
    assert (folder / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = result["summary"]
    assert [r["variant"] for r in summary] == ["ε=1", "ε=3", "non-private"]
    assert [r["seeds"] for r in summary] == [2, 2, 1]
    for row in summary:
        assert 0.5 <= row["auroc"]["mean"] <= 1.0
        assert row["auroc"]["lo"] is not None and row["auroc"]["hi"] is not None
        assert {(g["attribute"], g["metric"]) for g in row["gaps"]} == {
            ("sex", "auroc"),
            ("sex", "fnr"),
            ("age_band", "auroc"),
            ("age_band", "fnr"),
        }
        assert {s["attribute"] for s in row["subgroups"]} == {"sex", "age_band"}
    assert summary[0]["auroc"]["sd"] is not None  # two seeds
    import pandas as pd

    table = pd.read_csv(folder / "summary.csv")
    assert list(table["variant"]) == ["ε=1", "ε=3", "non-private"]
    assert {"auroc", "auroc_lo", "auroc_hi", "gap_auroc.sex", "subgroup_auroc.sex.F"} <= set(
        table.columns
    )
    assert len(pd.read_csv(folder / "trials.csv")) == 4


def test_human_output_prints_the_table(
    home: Path, params_file: Callable[..., Path], dpgov: Run
) -> None:
    code, out, err = dpgov("sweep", "--epsilons", "2", "--params", str(params_file(n_boot=0)))
    assert code == 0, err
    assert "Privacy–utility–fairness tradeoff" in out and "non-private" in out
    assert "AUROC sex=F" in out and "gap age_band FNR" in out
    assert "trial 1/1 (ε=2, seed 0): committed" in err
