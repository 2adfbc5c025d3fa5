"""MLflow's conventions, on a real SQLite store: one experiment per dataset, tagged classic ML
(``mlflow.experimentKind``) so the UI opens on its runs, with a description; run names and
descriptions that say what ran; the DVC data version logged as the run's input dataset."""

from __future__ import annotations

import json
from pathlib import Path

from dpgov import config
from dpgov.contracts import TAG_BLOCKS, TAG_DATA_VERSION, TAG_DATASET, TAG_PRIVATE, TAG_RUN_ID
from dpgov.tracking import conventions, runs

VERSION = "0123456789abcdef0123456789abcdef.dir"


def private_run(dataset: str, experiment: str = "dpgov-{dataset}") -> str:
    return runs.start_run(
        experiment=experiment,
        run_name="dp-mlp",
        params={
            "model": "mlp",
            "blocks": ["2001", "2002"],
            "target_epsilon": 2.0,
            "delta": 1e-5,
            "noise_multiplier": 1.23456,
            "sample_rate": 0.01,
            "steps": 300,
            "accountant": "pld",
        },
        tags={
            TAG_PRIVATE: "true",
            TAG_DATASET: dataset,
            TAG_BLOCKS: '["2001","2002"]',
            TAG_DATA_VERSION: VERSION,
            TAG_RUN_ID: f"r-{dataset}",
        },
    )


def test_one_classic_ml_experiment_per_dataset_with_named_described_runs(home: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri())
    first, second = private_run("cohort"), private_run("flchain")
    exp = {r: client.get_experiment(client.get_run(r).info.experiment_id) for r in (first, second)}
    assert [exp[first].name, exp[second].name] == ["dpgov-cohort", "dpgov-flchain"]
    tags = exp[first].tags
    assert tags[conventions.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tags[TAG_DATASET] == "cohort"
    assert "dataset cohort" in tags[conventions.NOTE_TAG]

    run = client.get_run(first)
    assert run.info.run_name == "dp-mlp cohort 2001+2002 eps2"
    note = run.data.tags[conventions.NOTE_TAG]
    assert note.startswith("DP-SGD training of a mlp on dataset cohort")
    assert f"data version {VERSION} (DVC)" in note and "sigma 1.235" in note

    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("cohort", VERSION)
    assert inp.dataset.source_type == "dvc"
    assert json.loads(inp.dataset.source)["data_version"] == VERSION
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"

    # lookups by tag search every dataset's experiment of the template
    found = runs.find_runs("dpgov-{dataset}", TAG_RUN_ID, "r-flchain")
    assert [r["run_id"] for r in found] == [second]


def test_a_plain_experiment_name_is_kept_and_an_older_experiment_gets_the_kind_tag(
    home: Path,
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config.mlflow_tracking_uri())
    old = client.create_experiment("team-runs")  # made before dpgov tagged experiments
    run_id = private_run("cohort", experiment="team-runs")
    assert client.get_run(run_id).info.experiment_id == old
    assert client.get_experiment(old).tags[conventions.EXPERIMENT_KIND_TAG] == (
        conventions.CLASSIC_ML
    )
    assert [r["run_id"] for r in runs.find_runs("team-runs", TAG_RUN_ID, "r-cohort")] == [run_id]
