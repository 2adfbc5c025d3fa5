"""What `dpgov audit-model` cannot reproduce is refused before anything is charged (exit 2)."""

from __future__ import annotations

import pytest

from dpgov.errors import UsageError
from dpgov.training.audit_model import _auditable
from tests.unit.gate.gate_factories import facts


def test_built_in_record_level_candidates_are_auditable() -> None:
    _auditable("m v1", facts(), {"model": "mlp"})  # no refusal
    _auditable("m v1", facts(max_records_per_patient=1), {"model": "cnn"})


def test_a_factory_model_is_refused_with_one_line() -> None:
    with pytest.raises(UsageError, match=r"model.factory 'monai.networks.nets:resnet18'"):
        _auditable("m v1", facts(), {"model.factory": "monai.networks.nets:resnet18"})


def test_a_patient_level_candidate_is_refused_with_one_line() -> None:
    with pytest.raises(UsageError, match="patient-level DP-SGD \\(up to 4 records"):
        _auditable("m v1", facts(max_records_per_patient=4), {"model": "cnn"})
