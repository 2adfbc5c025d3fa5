"""What a governed run leaves in MLflow, read back from the real SQLite store.

One governed run (with its non-private reference) is shared by the tests of this module; its
home folder is set up exactly as the ``dpgov_home`` fixture does, at module scope.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpgov.gate.facts import CandidateFacts
from dpgov.testing.policies import put_in_force
from dpgov.tracking import runs

REPO = Path(__file__).resolve().parents[3]
INTERFACE_TAGS = {
    "dpgov.status",
    "dpgov.private",
    "dpgov.run_id",
    "dpgov.data_version",
    "dpgov.dataset",
    "dpgov.blocks",
    "dpgov.reservation",
    "dpgov.ledger_entries",
    "dpgov.policy_sha256",
    "dpgov.author",
    "dpgov.epsilon",
    "dpgov.delta",
}


@pytest.fixture(scope="module")
def governed_run(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store_template: Path
) -> Iterator[tuple[Any, Any, Path]]:
    from dpgov.data import load_prepared
    from dpgov.ledger import Ledger
    from dpgov.testing.runs import governed_data
    from dpgov.training.governed import RunOptions, run_governed

    root = tmp_path_factory.mktemp("governed")
    home = root / "dpgov-home"
    home.mkdir()
    shutil.copy(mlflow_store_template, home / "mlflow.db")
    policy = root / "policy.yaml"
    policy.write_text((REPO / "policies" / "default.yaml").read_text())
    # ~400 training patients (the split is a keyed hash of each pseudonym under this home's
    # key: the exact count varies); batch 40: q = 1/ceil(n/40), ceil(n/40) steps an epoch
    world = governed_data(root / "data", n=500, dataset="synth", seed=1)
    data = load_prepared(world.prepared)
    params = world.params(
        {
            "train": {
                "epochs": 2,
                "batch_size": 40,
                "n_boot": 5,
                "reference": True,
                "min_group_n": 10,
                "noise_multiplier": 1.5,
                "max_grad_norm": 1.0,
                "target_epsilon": 3.0,
                "model_name": "readback",
                "device": "cpu",
            },
            "model": {"name": "mlp", "hidden": [8]},
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPGOV_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.delenv("DPGOV_LEDGER_URL", raising=False)
        mp.delenv("DPGOV_LEDGER_HMAC_KEY", raising=False)
        options = RunOptions(validation_out=str(root / "validation"))
        ledger = Ledger.open()
        put_in_force(policy, ledger=ledger)  # a run enforces the policy in force
        summary = run_governed(params, ledger=ledger, options=options)
        yield summary, data, policy


def _fit_patients(data: Any) -> int:
    """The training patients DP-SGD trains on: those outside the validation split (the
    default train.validation_fraction 0.2, keyed per pseudonym with train.seed 0)."""
    from dpgov.training.validation_split import validation_mask

    ids = data.train["patient_id"].astype(str).to_numpy()
    return int((~validation_mask(ids, 0.2, 0)).sum())


def _opacus_plan(data: Any, batch_size: int, epochs: int) -> tuple[float, int]:
    """Opacus's Poisson plan for the run's training patients: a loader of ceil(n / batch)
    batches, q = 1 / len(loader), len(loader) steps an epoch."""
    batches = math.ceil(_fit_patients(data) / batch_size)
    return 1 / batches, batches * epochs


def test_run_records_every_privacy_parameter(governed_run: Any) -> None:
    summary, data, _ = governed_run
    params = runs.read_run(summary.run_id)["params"]
    q, steps = _opacus_plan(data, batch_size=40, epochs=2)
    expected = {
        "noise_multiplier": "1.5",
        "sample_rate": str(q),
        "steps": str(steps),
        "epochs": "2",
        "batch_size": "40",
        "max_grad_norm": "1.0",
        "accountant": "pld",
        "delta": "1e-05",
        "sampling": "poisson",
        "neighbouring": "add_remove",
        "unit_of_privacy": "patient",
        "device": "cpu",
    }
    assert {k: params[k] for k in expected} == expected


def test_run_records_its_secret_noise_source(governed_run: Any) -> None:
    summary, _, _ = governed_run
    run = runs.read_run(summary.run_id)
    assert (run["params"]["noise_source"], run["params"]["seed"]) == ("os_entropy", "0")
    assert run["tags"]["dpgov.noise_source"] == "os_entropy"
    facts = runs.read_json(summary.run_id, "candidate_facts.json")
    assert facts["noise_source"] == "os_entropy"


def test_run_metrics_hold_epsilon_block_totals_utility_and_gaps(governed_run: Any) -> None:
    summary, _, _ = governed_run
    metrics = runs.read_run(summary.run_id)["metrics"]
    assert metrics["epsilon"] == pytest.approx(summary.epsilon)
    assert metrics["epsilon_block.2001"] == pytest.approx(summary.block_epsilon["2001"])
    assert metrics["auroc"] == pytest.approx(summary.auroc)
    assert {
        "accuracy",
        "brier",
        "calibration_error",
        "gap.sex.auroc",
        "gap.age_band.fnr",
        "subgroup.sex.F.auroc",
        "price.auroc_drop",
        "reference_auroc",
    } <= set(metrics)


def test_run_tags_link_data_version_ledger_and_policy(governed_run: Any) -> None:
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy

    summary, data, policy = governed_run
    tags = runs.read_run(summary.run_id)["tags"]
    assert tags["dpgov.data_version"] == data.meta["data_version"]
    assert tags["dpgov.reservation"] == summary.reservation
    assert json.loads(tags["dpgov.ledger_entries"]) == summary.ledger_entries
    assert tags["dpgov.policy_sha256"] == load_policy(policy).sha256
    kinds = {e.seq: e.kind for e in Ledger.open().entries()}
    assert [kinds[s] for s in summary.ledger_entries] == ["reservation", "commit"]


def test_candidate_facts_artifact_is_the_gate_contract(governed_run: Any) -> None:
    summary, _, _ = governed_run
    facts = CandidateFacts.model_validate(runs.read_json(summary.run_id, "candidate_facts.json"))
    assert (facts.model_name, facts.model_version) == ("readback", summary.model_version)
    assert facts.private and facts.epsilon == pytest.approx(summary.epsilon)
    assert facts.reservation_id == summary.reservation
    assert facts.reference is not None
    assert facts.reference.run_id == summary.reference_run_id
    assert {s.attribute for s in facts.subgroups} == {"sex", "age_band"}


def test_model_version_carries_the_interface_tags(governed_run: Any) -> None:
    summary, _, _ = governed_run
    version = runs.read_model_version("readback", summary.model_version)
    tags = version["tags"]
    assert set(tags) >= INTERFACE_TAGS
    assert (tags["dpgov.status"], tags["dpgov.private"]) == ("candidate", "true")
    assert tags["dpgov.run_id"] == version["run_id"] == summary.run_id
    assert float(tags["dpgov.epsilon"]) == pytest.approx(summary.epsilon)
    assert json.loads(tags["dpgov.blocks"]) == ["2001", "2002"]


def test_reference_leaves_metrics_only_never_a_model_or_a_version(governed_run: Any) -> None:
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    summary, _, _ = governed_run
    assert summary.reference_run_id is not None and summary.reference_version is None
    ref = runs.read_run(summary.reference_run_id)
    assert (ref["tags"]["dpgov.status"], ref["tags"]["dpgov.private"]) == ("reference", "false")
    assert ref["metrics"]["auroc"] == pytest.approx(summary.reference_auroc)
    assert "candidate_facts.json" not in ref["artifacts"]
    assert not any(a.startswith(("model", "data/")) for a in ref["artifacts"]), ref["artifacts"]
    client = MlflowClient()
    versions = client.search_model_versions("name='readback'")
    assert [v.run_id for v in versions] == [summary.run_id]  # only the DP model
    logged = client.search_logged_models(
        experiment_ids=[client.get_run(summary.reference_run_id).info.experiment_id]
    )
    assert summary.reference_run_id not in {m.source_run_id for m in logged}
    statement = runs.read_json(summary.run_id, "privacy_statement.json")
    assert statement["non_private_reference"]["run_id"] == summary.reference_run_id
    assert statement["noise_source"] == "os_entropy"
    text = mlflow.artifacts.load_text(f"runs:/{summary.run_id}/privacy_statement.txt")
    assert "WITHOUT differential privacy" in text and summary.reference_run_id in text
    assert "operating-system entropy" in text


def test_privacy_statement_names_what_the_guarantee_covers(governed_run: Any) -> None:
    summary, data, _ = governed_run
    statement = runs.read_json(summary.run_id, "privacy_statement.json")
    assert statement["epsilon"] == pytest.approx(summary.epsilon)
    assert (statement["delta"], statement["accountant"], statement["sampling"]) == (
        1e-5,
        "pld",
        "poisson",
    )
    assert statement["unit_of_privacy"] == "patient"
    assert statement["covers"] == {
        "dataset": "synth",
        "blocks": ["2001", "2002"],
        "data_version": data.meta["data_version"],
        "n_train_patients": _fit_patients(data),
        "split": "train",
    }
    artifacts = runs.read_run(summary.run_id)["artifacts"]
    assert {"privacy_statement.txt", "subgroups.csv", "candidate_facts.json"} <= set(artifacts)


def test_registered_model_gives_the_evaluated_scores(governed_run: Any) -> None:
    import torch

    summary, data, _ = governed_run
    model = runs.load_model(f"models:/readback/{summary.model_version}")
    x = torch.from_numpy(np.array(data.features("test")))
    with torch.no_grad():
        scores = torch.sigmoid(model(x)).reshape(-1).numpy()
    from dpgov.training.evaluate import auroc

    assert auroc(data.labels("test"), scores) == pytest.approx(summary.auroc, abs=1e-6)
    assert np.all((scores >= 0) & (scores <= 1))


def test_the_threshold_is_the_validation_splits_prevalence_and_exact_metrics_are_not_covered(
    governed_run: Any,
) -> None:
    """Exact evaluation (evaluation.private false): the cut-off is the positive rate of the
    training patients held out as the validation split, never the test split's; the
    statement lists the exact test metrics as not covered."""
    from dpgov.training.records import EXACT_TEST_METRICS
    from dpgov.training.validation_split import validation_mask

    summary, data, _ = governed_run
    ids = data.train["patient_id"].astype(str).to_numpy()
    held_out = validation_mask(ids, 0.2, 0)
    rate = float(np.mean(data.labels("train")[held_out]))
    threshold = runs.read_run(summary.run_id)["metrics"]["threshold"]
    assert threshold == pytest.approx(rate)
    assert threshold != pytest.approx(float(np.mean(data.labels("test"))))
    statement = runs.read_json(summary.run_id, "privacy_statement.json")
    assert statement["evaluation"] == {"private": False}
    assert EXACT_TEST_METRICS in statement["not_covered"]
    facts = runs.read_json(summary.run_id, "candidate_facts.json")
    assert facts["private_evaluation"] is None and facts["brier"] is not None
