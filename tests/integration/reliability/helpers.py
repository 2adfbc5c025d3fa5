"""Helpers of the reliability tests: the command line run in this process (fast) or in a
subprocess (for the handful that must be), a small governed world (home, data, policy), and
independent checks of the ledger (chain, charges, ε per block)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]

# Audit findings that would mean something is broken. The others describe the test worlds: the
# synthetic data is not in DVC, and training does not anchor every commit.
LEDGER_BROKEN = frozenset(
    {
        "chain_broken",
        "row_corrupted",
        "replay_inconsistent",
        "projection_mismatch",
        "projection_unreadable",
        "epsilon_mismatch",
        "block_over_budget",
        "run_without_charges",
        "run_charge_mismatch",
        "charge_without_run",
    }
)
RELEASE_BROKEN = frozenset(
    {"alias_outside_gate", "release_without_decision", "release_without_approvals"}
)


# --------------------------------------------------------------------------- the command line


@dataclass
class Result:
    code: int
    out: str
    err: str
    args: tuple[str, ...] = ()

    def json(self) -> Any:
        return json.loads(self.out)

    def clean_error(self) -> bool:
        """A refusal or bad input that a person can read: one ``error:`` line (or click's usage
        message), exit 1 or 2, and no traceback anywhere."""
        if "Traceback (most recent call last)" in self.out + self.err:
            return False
        if self.code not in (1, 2):
            return False
        text = self.err.strip()
        if text.startswith("error: ") and "\n" not in text:
            return True
        if "Usage: " in self.out + text:  # click's usage message, or the help shown instead
            return True
        return self.code == 1 and bool(self.out.strip() or text)  # findings, blocked: listed


@contextlib.contextmanager
def environment(env: Mapping[str, str | None] | None) -> Iterator[None]:
    """``os.environ`` with ``env`` applied (None removes a variable), restored afterwards."""
    saved = dict(os.environ)
    try:
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def dpgov(
    *args: Any, env: Mapping[str, str | None] | None = None, cwd: Path | None = None
) -> Result:
    """``dpgov ARGS`` in this process through :func:`dpgov.cli.main` (the console entry point),
    capturing its exit code, stdout and stderr. Any exception other than SystemExit escapes:
    that is a traceback the user would have seen."""
    from dpgov.cli import main

    argv = tuple(str(a) for a in args)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = ["dpgov", *argv]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return Result(code, out.getvalue(), err.getvalue(), argv)


def dpgov_process(
    *args: Any,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> Result:
    """``dpgov ARGS`` as its own process (what a user runs)."""
    full = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    argv = tuple(str(a) for a in args)
    proc = subprocess.run(
        [sys.executable, "-m", "dpgov", *argv],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, argv)


# --------------------------------------------------------------------------- a governed world


def write_policy(path: Path, **budget: Any) -> Path:
    """The default policy with fairness off and a lower AUROC floor (the synthetic cohort's
    subgroups are small), its budget changed by ``budget``."""
    policy = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    policy["budget"].update(budget)
    policy["utility"]["min_auroc"] = 0.5
    policy["utility"]["max_calibration_error"] = None
    for key in ("max_auroc_gap", "max_fnr_gap", "max_auroc_gap_widening", "max_fnr_gap_widening"):
        policy["fairness"][key] = None
    policy["fairness"]["require_judgeable"] = False
    path.write_text(yaml.safe_dump(policy))
    return path


def tiny_train(**over: Any) -> dict[str, Any]:
    """``train:`` params of a run of a second or two: 8 steps of logistic regression (no
    validation split: DP-SGD trains on every training patient, so the steps follow from n)."""
    base = {
        "epochs": 1,
        "batch_size": 64,
        "validation_fraction": 0.0,
        "noise_multiplier": 2.0,
        "target_epsilon": 3.0,
        "reference": False,
        "n_boot": 0,
        "min_group_n": 10,
        "learning_rate": 0.5,
        "device": "cpu",
        "model_name": "rel-model",
        "experiment": "rel",
    }
    return {**base, **over}


def data_section(raw: Path, contract: Path) -> dict[str, Any]:
    """The ``data:`` params of the synthetic cohort: what its validation reads."""
    return {
        "dataset": "synthetic",
        "source": str(raw),
        "contract": str(contract),
        "min_block_patients": 1,
        "seed": 0,
    }


def validation_folder(prepared: str | Path, policy: str | Path) -> Path:
    """Where governed runs on ``prepared`` record and reuse its validation under ``policy``:
    beside the prepared data, one folder per policy content (never the repository's
    ``data/validation``)."""
    from dpgov.policy import load_policy

    return Path(prepared).parent / "validation" / load_policy(policy).sha256[:12]


def validate(prepared: Path, raw: Path, contract: Path, policy: Path) -> Any:
    """Validate the cohort under ``policy`` now, where its governed runs will reuse it (runs
    started together would each validate it, racing to write the same folder)."""
    from dpgov.data.params import DataParams
    from dpgov.data.validation import ensure_validated

    return ensure_validated(
        prepared,
        data_params=DataParams.model_validate(data_section(raw, contract)),
        policy=policy,
        out=validation_folder(prepared, policy),
    )


@dataclass
class World:
    """One isolated dpgov installation: home, ledger, tracking store, data, policy."""

    home: Path
    data: Path  # prepared folder
    raw: Path  # the CSV it was prepared from
    contract: Path
    policy: Path
    ledger_url: str
    tracking_uri: str
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **more: str | None) -> dict[str, str | None]:
        return {
            "DPGOV_HOME": str(self.home),
            "DPGOV_LEDGER_URL": self.ledger_url,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "DPGOV_LEDGER_HMAC_KEY": None,
            "DPGOV_FAULT": None,
            "DPGOV_FAULT_PAUSE": None,
            **self.extra_env,
            **more,
        }

    def params(self, **train: Any) -> dict[str, Any]:
        return {
            "data": data_section(self.raw, self.contract),
            "train": tiny_train(data=str(self.data), **train),
            "model": {"name": "logreg"},
        }

    def validate(self) -> Any:
        """Validate the world's data under its policy, where its governed runs reuse it."""
        return validate(self.data, self.raw, self.contract, self.policy)

    def params_file(self, path: Path, **train: Any) -> Path:
        path.write_text(yaml.safe_dump(self.params(**train)))
        return path

    def ledger(self) -> Any:
        from dpgov.ledger import Ledger

        return Ledger.open(self.ledger_url)

    def budget(self) -> Any:
        from dpgov.policy import load_policy

        return load_policy(self.policy).policy.budget


@dataclass
class Services:
    """What ``scripts/services.sh start`` started: its folder and the env of each identity."""

    folder: Path
    env: dict[str, str]  # as the dpgov service identity
    auth: bool
    identities: dict[str, dict[str, str]]  # dpgov, analyst, admin (with --auth)

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def ledger_url(self) -> str:
        return self.env["DPGOV_LEDGER_URL"]


# --------------------------------------------------------------------------- independent checks


def replayed_charges(ledger: Any) -> dict[tuple[str, str], list[Any]]:
    """Every block's charged mechanisms rebuilt from the entries alone (not the projections):
    a reservation charges its plan; a commit replaces it by what ran; a release removes it; an
    abort keeps the plan."""
    from dpgov.accounting import mechanism_from_dict

    plans: dict[str, tuple[str, list[str], Any]] = {}
    for e in ledger.entries():
        p = e.payload
        if e.kind == "reservation":
            mech = mechanism_from_dict(p["mechanism"])
            plans[p["reservation"]] = (p["dataset"], p["blocks"], mech)
        elif e.kind == "commit":
            ds, blocks, _ = plans[p["reservation"]]
            plans[p["reservation"]] = (ds, blocks, mechanism_from_dict(p["mechanism"]))
        elif e.kind == "release":
            plans.pop(p["reservation"])
    out: dict[tuple[str, str], list[Any]] = {}
    for ds, blocks, mech in plans.values():
        for b in blocks:
            out.setdefault((ds, b), []).append(mech)
    return out


def enforced_epsilon(mechs: list[Any], budget: Any) -> float:
    """The ε the ledger enforces for these charges, composed from scratch: the RDP filter's
    over the policy's orders (budget.composition adaptive, the default; an independent
    implementation on dp_accounting's RdpAccountant), else the policy's accountant."""
    from dpgov.accounting import epsilon
    from tests.filter_reference import filter_eps

    if budget.composition == "adaptive":
        return filter_eps(mechs, budget.delta, tuple(budget.orders))
    return epsilon(mechs, delta=budget.delta, accountant=budget.accountant)


def recomputed_epsilon(ledger: Any, budget: Any) -> dict[tuple[str, str], float]:
    """Every block's enforced ε composed from scratch over the replayed charges, at the
    policy's δ (:func:`enforced_epsilon`)."""
    return {key: enforced_epsilon(mechs, budget) for key, mechs in replayed_charges(ledger).items()}
