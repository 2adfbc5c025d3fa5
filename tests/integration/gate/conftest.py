"""A real ledger (SQLite) and a real MLflow registry (SQLite store) in a tmp dpgov home, with
model versions registered the way training registers them: a run holding candidate_facts.json,
its privacy statement and model files, a model version pointing at it, the dpgov.* tags, and
the ledger's facts_bound entry (the digests read back from the store).

Who acts: in-process commands run as the OS user the test names (``cli(..., as_="carol")``,
default: the ``--by`` name, i.e. the approver running the command as themselves), by
substituting :func:`dpgov.identity.os_user`; tests in ``test_identities.py`` use real second
identities (OS users, PostgreSQL roles) instead."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_FACTORIES = str(Path(__file__).resolve().parents[2] / "unit" / "gate")
if _FACTORIES not in sys.path:
    sys.path.insert(0, _FACTORIES)

from gate_factories import MODEL  # noqa: E402
from gate_factories import facts as make_facts  # noqa: E402

from dpgov.gate.facts import CandidateFacts  # noqa: E402

BLOCKS = ["1995", "1996"]


@dataclass
class Env:
    home: Path
    ledger: Any
    client: Any
    experiment_id: str
    policy_path: Path

    def set_policy(self, text: str | None = None, *, actor: str = "tester") -> None:
        """Record the policy file (optionally rewritten to ``text``) as the policy in force."""
        from dpgov.ledger.policies import set_policy
        from dpgov.policy import load_policy

        if text is not None:
            self.policy_path.write_text(text)
        set_policy(
            self.ledger, load_policy(self.policy_path), dataset=None, reason="test", actor=actor
        )

    def reserve_and_commit(
        self, steps: int = 20, *, commit: bool = True, run_id: str | None = None
    ) -> Any:
        from dpgov.accounting import DpSgdMechanism
        from dpgov.policy import load_policy

        loaded = load_policy(self.policy_path)
        mech = DpSgdMechanism(noise_multiplier=2.0, sample_rate=0.01, steps=steps)
        res = self.ledger.reserve(
            dataset="flchain",
            blocks=BLOCKS,
            mechanism=mech,
            budget=loaded.policy.budget,
            policy_sha256=loaded.sha256,
        )
        if commit:
            self.ledger.commit(res.id, run_id=run_id)
        return res

    def register(
        self,
        *,
        private: bool = True,
        commit: bool = True,
        torch_model: bool = False,
        bind: bool = True,
        **overrides: Any,
    ) -> tuple[str, CandidateFacts]:
        """Register one model version (a run with candidate_facts.json); return its version.

        ``torch_model``: log a real nn.Linear with mlflow.pytorch and register the LoggedModel
        (slower); otherwise the version points at the run without model files."""
        from dpgov.tracking.registry import FACTS_ARTIFACT, facts_json

        run = self.client.create_run(self.experiment_id)
        rid = run.info.run_id
        model_uri = f"runs:/{rid}/model"
        if torch_model:
            model_uri = self._log_torch_model(rid)
        fields: dict[str, Any] = {"run_id": rid, "model_version": None, "private": private}
        res = None
        if private:
            res = self.reserve_and_commit(commit=commit, run_id=rid)
            fields.update(reservation_id=res.id, epsilon=res.epsilon_run, ledger_entries=[res.seq])
        else:
            fields.update(
                reservation_id=None,
                epsilon=None,
                delta=None,
                accountant=None,
                noise_multiplier=None,
                sample_rate=None,
                steps=None,
                max_grad_norm=None,
                reference=None,
            )
        fields.update(overrides)
        facts = make_facts(**fields)
        out = self.home / "facts" / rid
        out.mkdir(parents=True)
        (out / FACTS_ARTIFACT).write_text(facts_json(facts))
        self.client.log_artifact(rid, str(out / FACTS_ARTIFACT))
        if private:
            statement = out / "privacy_statement.json"
            statement.write_text(json.dumps({"epsilon": facts.epsilon, "run_id": rid}))
            self.client.log_artifact(rid, str(statement))
        if not torch_model:  # model files for the weights digest
            weights = out / "model"
            weights.mkdir()
            (weights / "weights.bin").write_bytes(rid.encode() * 8)
            self.client.log_artifacts(rid, str(weights), "model")
        self.client.set_terminated(rid)
        try:
            self.client.get_registered_model(MODEL)
        except Exception:
            self.client.create_registered_model(MODEL)
        tags = {
            "dpgov.status": "candidate" if private else "reference",
            "dpgov.private": str(private).lower(),
            "dpgov.run_id": rid,
            "dpgov.author": facts.author,
        }
        if torch_model:
            import mlflow

            mlflow.set_tracking_uri(self.client.tracking_uri)
            mv = mlflow.register_model(model_uri, MODEL, tags=tags)
            assert mv.run_id == rid
        else:
            mv = self.client.create_model_version(MODEL, source=model_uri, run_id=rid, tags=tags)
        if bind and (commit or not private):
            self.bind(str(mv.version), rid, facts.reservation_id if private else None)
        return str(mv.version), facts

    def bind(self, version: str, run_id: str, reservation: str | None) -> Any:
        """What tracking does after registering: bind the digests, as the author ("bob")."""
        import dpgov.identity
        from dpgov.tracking.binding import bind_version

        saved = dpgov.identity.os_user
        dpgov.identity.os_user = lambda: "bob"  # type: ignore[assignment]
        try:
            return bind_version(
                self.ledger, model=MODEL, version=version, run_id=run_id, reservation=reservation
            )
        finally:
            dpgov.identity.os_user = saved  # type: ignore[assignment]

    def _log_torch_model(self, run_id: str) -> str:
        import mlflow
        import numpy as np
        import torch

        mlflow.set_tracking_uri(self.client.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                torch.nn.Linear(3, 1),
                name="model",
                pip_requirements=["torch"],
                input_example=np.zeros((1, 3), dtype=np.float32),
            )
        return info.model_uri

    def artifact(self, version: str, name: str) -> Path:
        """The file the (local) artifact store holds for the version's run."""
        run_id = self.client.get_model_version(MODEL, version).run_id
        root = self.client.get_run(run_id).info.artifact_uri.removeprefix("file://")
        return Path(root) / name

    def entries(self, kind: str) -> list[Any]:
        return self.ledger.entries(kind=kind)

    def alias(self, alias: str = "champion") -> str | None:
        from dpgov.tracking.registry import Registry

        return Registry().alias_version(MODEL, alias)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(MODEL, version).tags)


@pytest.fixture
def env(dpgov_home: Path, mlflow_store_template: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    from mlflow import MlflowClient

    from dpgov.ledger import Ledger

    shutil.copy(mlflow_store_template, dpgov_home / "mlflow.db")
    uri = f"sqlite:///{dpgov_home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("gate-tests", artifact_location=str(dpgov_home / "mlartifacts"))
    ledger = Ledger.open()
    for b in BLOCKS:
        ledger.add_block(dataset="flchain", block=b, patients=1000)
    policy = dpgov_home / "policy.yaml"
    policy.write_text(
        (Path(__file__).resolve().parents[3] / "policies" / "default.yaml").read_text()
    )
    monkeypatch.delenv("DPGOV_ACTOR", raising=False)
    yield Env(dpgov_home, ledger, client, exp, policy)
    ledger.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def acting_as(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Commands from now on run as OS user ``name`` (see the module docstring)."""
    import dpgov.identity

    monkeypatch.setattr(dpgov.identity, "os_user", lambda: name)


@pytest.fixture
def cli(env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run ``dpgov ARGS`` in-process through the real entry point (exit codes included), as
    OS user ``as_`` (default: the ``--by`` name, else "tester")."""
    from dpgov.cli import main

    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, as_: str | None = None) -> CliResult:
        argv = ["dpgov", *args]
        by = args[args.index("--by") + 1] if "--by" in args else None
        acting_as(monkeypatch, as_ or by or "tester")
        monkeypatch.setattr(sys, "argv", argv)
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
