"""Bad input to ``dpgov sweep``: one clear line, exit 2, nothing charged or written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., tuple[int, str, str]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilons", ""], "--epsilons: empty list"),
        (["--epsilons", " , "], "--epsilons: item 1 of ',' is empty"),
        (["--epsilons", "1,,3"], "--epsilons: item 2 of '1,,3' is empty"),
        (["--epsilons", "abc"], "--epsilons: 'abc' is not a number"),
        (["--epsilons", "1,-3"], "every ε must be a finite number > 0, found '-3'"),
        (["--epsilons", "0"], "every ε must be a finite number > 0, found '0'"),
        (["--epsilons", "inf"], "every ε must be a finite number > 0, found 'inf'"),
        (["--epsilons", "1,3,1"], "ε 1 is listed twice"),
        (["--epsilons", "1", "--seeds", "0"], "--seeds: must be between 1 and 100, found 0"),
        (["--epsilons", "1", "--seeds", "-2"], "--seeds: must be between 1 and 100, found -2"),
        (["--epsilons", "1", "--seeds", "two"], "--seeds: expected a whole number >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_charges_nothing(
    args: list[str], message: str, dpgov_home: Path, dpgov: Run
) -> None:
    code, out, err = dpgov("sweep", *args)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err
    assert list(dpgov_home.iterdir()) == []  # no ledger, no MLflow store, no sweep folder


def test_an_epsilon_no_noise_can_reach_is_bad_input(
    dpgov_home: Path, params_file: Callable[..., Path], dpgov: Run
) -> None:
    from dpgov.ledger import Ledger

    code, _, err = dpgov(
        "sweep", "--epsilons", "0.0001,1", "--dry-run", "--params", str(params_file())
    )
    assert code == 2
    assert err.startswith("error: --epsilons: ε=0.0001 is too small") and err.count("\n") == 1
    assert Ledger.open().entries() == []


def test_data_that_fails_its_contract_is_refused_before_anything_is_charged(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dpgov: Run
) -> None:
    """Every path validates: a sweep on data that fails its contract (here: blocks under the
    contract's minimum of patients) is refused, exit 1, with no reservation and no run."""
    import yaml

    from dpgov.ledger import Ledger
    from dpgov.testing.runs import governed_data

    world = governed_data(tmp_path / "data", n=300, dataset="small", min_block=400)
    monkeypatch.chdir(tmp_path)  # the validation it records stays in tmp_path
    params = tmp_path / "params.yaml"
    body = world.params({"train": {"epochs": 1, "batch_size": 30, "n_boot": 0, "device": "cpu"}})
    params.write_text(yaml.safe_dump(body.model_dump(mode="json")))
    code, _out, err = dpgov("sweep", "--epsilons", "1,3", "--params", str(params), "--json")
    assert code == 1, err
    assert "validation of" in err and "at least 400 training patients" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert Ledger.open().entries() == []
    assert not (home / "sweeps").exists()


def test_reproducible_noise_under_a_policy_that_forbids_it_records_nothing(
    dpgov_home: Path, params_file: Callable[..., Path], dpgov: Run
) -> None:
    """The default policy's gate refuses reproducible noise: the sweep is refused (exit 1)
    before its schedule is committed, so the ledger holds nothing of it."""
    from dpgov.ledger import Ledger

    before = len(Ledger.open().entries())
    code, _, err = dpgov(
        "sweep", "--epsilons", "1,3", "--params", str(params_file(reproducible_noise=True))
    )
    assert code == 1, err
    last = err.strip().splitlines()[-1]  # after the sweep's plan line, one error line
    assert last.startswith("error: ") and "release.allow_reproducible_noise: false" in last
    assert len(Ledger.open().entries()) == before
    assert Ledger.open().entries(kind="schedule_committed") == []
