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
