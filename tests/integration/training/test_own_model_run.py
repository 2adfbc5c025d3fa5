"""A governed run with your own model (``model.factory``) on images, against a real SQLite
ledger and MLflow store: refused with nothing charged unless the policy in force allow-lists
it or when its weights' SHA-256 is wrong; allowed, it trains, and the run records the
factory, the BatchNorm change and the weights' SHA-256 (MLflow params, privacy statement)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpgov.contracts import ARTIFACT_PRIVACY_STATEMENT, ARTIFACT_PRIVACY_STATEMENT_TEXT
from dpgov.errors import UsageError
from dpgov.ledger import Ledger
from dpgov.policy import load_policy
from dpgov.testing.policies import put_in_force
from dpgov.tracking import runs
from dpgov.training.governed import RunOptions, run_governed
from dpgov.training.params import parse_params

REPO = Path(__file__).resolve().parents[3]
FACTORY = "dpgov.testing.models:tiny_bn_net"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from dpgov.testing.runs import governed_data

    return governed_data(tmp_path_factory.mktemp("own-model"), kind="image", n=80)


def _policy(tmp_path: Path, allowed: list[str]) -> Path:
    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["release"]["allowed_model_factories"] = allowed
    path = tmp_path / f"policy-{len(allowed)}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def _weights(tmp_path: Path) -> tuple[str, str]:
    import torch

    from dpgov.testing.models import tiny_bn_net

    torch.manual_seed(3)
    path = tmp_path / "public.pt"
    torch.save(tiny_bn_net().state_dict(), path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def _params(images: Any, **model: Any) -> Any:
    base = parse_params(
        {
            "train": {
                "epochs": 1,
                "batch_size": 16,
                "n_boot": 0,
                "reference": False,
                "min_group_n": 5,
                "noise_multiplier": 1.5,
                "target_epsilon": 5.0,
                "learning_rate": 0.5,
                "model_name": "own-model",
                "device": "cpu",
            },
            "model": {"factory": FACTORY, "head": "5", **model},
        }
    )
    return images.params(base)


def _run(images: Any, params: Any, policy: Path, tmp_path: Path) -> Any:
    options = RunOptions(validation_out=str(tmp_path / "validation"))
    return run_governed(params, load_policy(policy), ledger=Ledger.open(), options=options)


def test_not_allow_listed_or_a_wrong_hash_is_refused_with_nothing_charged(
    home: Path, images: Any, tmp_path: Path
) -> None:
    policy = _policy(tmp_path, [FACTORY])
    put_in_force(policy, ledger=Ledger.open())
    before = Ledger.open().head()
    other = _params(images, factory="dpgov.testing.models:tiny_unprivate_net", head=None)
    with pytest.raises(UsageError, match="is not allowed by the policy in force") as refused:
        _run(images, other, policy, tmp_path)
    assert refused.value.exit_code == 2 and "\n" not in str(refused.value)  # one line
    path, _sha = _weights(tmp_path)
    wrong = _params(images, weights=path, weights_sha256="ab" * 32)
    with pytest.raises(UsageError, match=r"not model\.weights_sha256"):
        _run(images, wrong, policy, tmp_path)
    assert Ledger.open().head() == before
    assert not [e for e in Ledger.open().entries() if e.kind in ("reservation", "commit")]


def test_an_allowed_factory_trains_and_records_its_changes_and_weights(
    home: Path, images: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, sha = _weights(tmp_path)
    params = _params(images, weights=path, weights_sha256=sha, weights_origin="toy public set")
    policy = _policy(tmp_path, ["dpgov.testing.models:*"])
    put_in_force(policy, ledger=Ledger.open())
    summary = _run(images, params, policy, tmp_path)
    assert summary.steps == summary.plan["steps"] > 0
    assert summary.plan["model"] == "factory"
    assert any("BatchNorm → GroupNorm" in line for line in summary.plan["model_changes"])
    recorded = runs.read_run(summary.run_id)["params"]
    assert recorded["model.factory"] == FACTORY
    assert recorded["model.weights_sha256"] == sha
    assert recorded["model.batchnorm"] == "groupnorm"
    statement = runs.read_json(summary.run_id, ARTIFACT_PRIVACY_STATEMENT)
    assert statement["model"]["weights"] == {
        "path": path,
        "sha256": sha,
        "origin": "toy public set",
    }
    import mlflow

    text = mlflow.artifacts.load_text(f"runs:/{summary.run_id}/{ARTIFACT_PRIVACY_STATEMENT_TEXT}")
    assert f"Model: {FACTORY}" in text and f"sha256 {sha}" in text

    from dpgov.cli.run import _render

    capsys.readouterr()
    _render(summary.to_dict())  # dpgov run's output: the change is reported, at 80 columns
    out = capsys.readouterr().out
    assert "model: 1 BatchNorm → GroupNorm: 1" in out
    assert "model: weights" in out and sha[:12] in out
    assert max(len(line) for line in out.splitlines()) <= 80
