"""A governed run on a generated imaging cohort whose patients hold several images: the plan
samples patients, the ledger is charged the patient-level mechanism (q over patients), Opacus's
history equals it, and the privacy statement says the unit of privacy is the patient."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dpgov.accounting import DpSgdMechanism
from dpgov.data.params import DataParams
from dpgov.data.preparation import prepare
from dpgov.ledger import Ledger
from dpgov.policy import load_policy
from dpgov.testing.sources import write_images
from dpgov.training.params import parse_params
from dpgov.training.records import statement_text


def test_patients_with_several_images_are_charged_at_the_patient_level(
    home: Path,
    tmp_path: Path,
    small_params: Callable[..., Any],
    write_policy: Callable[..., Path],
) -> None:
    from dpgov.tracking import runs
    from dpgov.training.governed import RunOptions, call_step, run_governed

    source, contract, metadata = write_images(
        tmp_path / "raw", seed=1, n_train=200, n_val=40, n_test=100, size=8, images_per_patient=4
    )
    result = prepare(
        source,
        contract,
        dataset="synthimg",
        metadata=metadata,
        out=tmp_path / "synthimg",
        params=DataParams(seed=1, min_block_patients=1),
        register=False,
    )
    raw = small_params(
        model="cnn", epochs=1, batch_size=10, min_group_n=5, max_images_per_patient_step=3
    ).model_dump(mode="json")
    raw["data"] = {
        "dataset": "synthimg",
        "source": str(source),
        "contract": str(contract),
        "metadata": str(metadata),
        "seed": 1,
        "min_block_patients": 1,
    }
    raw["train"]["data"] = str(result.path)
    params = parse_params(raw)
    ledger = Ledger.open()
    summary = run_governed(
        params,
        load_policy(write_policy()),
        ledger=ledger,
        options=RunOptions(validation_out=str(tmp_path / "validation")),
        step=call_step,
    )
    plan = summary.plan
    assert plan["patient_level"] is True and plan["unit_of_privacy"] == "patient"
    assert plan["max_records_per_patient"] > 1
    patients = plan["n_train_patients"]
    assert patients < plan["n_train_records"]  # several images for some patients
    q = 1.0 / int(np.ceil(patients / 10))  # over patients, not images
    assert plan["sample_rate"] == q
    [commit] = ledger.entries("commit")
    charged = DpSgdMechanism.from_dict(commit.payload["mechanism"])
    assert charged.sample_rate == q and charged.steps == summary.steps == plan["steps"]
    statement = runs.read_json(summary.run_id, "privacy_statement.json")
    assert statement["unit_of_privacy"] == "patient" and statement["patient_level"] is True
    assert statement["records_per_patient"] == plan["max_records_per_patient"]
    text = statement_text(statement)  # what track logs as privacy_statement.txt
    assert "Unit of privacy: patient" in text and "per-patient clipping" in text
    # the candidate facts carry it, so a release's statement says it too (not 1)
    facts = runs.read_json(summary.run_id, "candidate_facts.json")
    assert facts["max_records_per_patient"] == plan["max_records_per_patient"]
