"""Accounting errors carry their exit code on the class (the CLI maps none of them by name)."""

import pytest

from dpgov.accounting import AccountantFailed, AccountingInputError, InfeasibleBudget
from dpgov.errors import DpgovError, Refused, UsageError


def test_bad_accounting_input_is_a_usage_error_exiting_2():
    err = AccountingInputError("delta must be in (0, 1), found 2")
    assert isinstance(err, UsageError) and isinstance(err, ValueError)
    assert err.exit_code == 2


def test_an_infeasible_budget_is_a_refusal_exiting_1_and_still_a_value_error():
    err = InfeasibleBudget("the budget is spent")
    assert isinstance(err, Refused) and isinstance(err, ValueError)
    assert err.exit_code == 1


def test_a_failed_accountant_exits_1_and_is_still_a_runtime_error():
    err = AccountantFailed("the PRV accountant failed")
    assert isinstance(err, DpgovError) and isinstance(err, RuntimeError)
    assert not isinstance(err, UsageError | Refused)
    assert err.exit_code == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AccountingInputError("steps must be >= 1, found 0"), 2),
        (InfeasibleBudget("no noise multiplier up to 500 keeps ε within 1"), 1),
        (AccountantFailed("the PRV accountant failed on this history"), 1),
    ],
)
def test_the_command_line_prints_one_line_and_exits_with_the_class_code(
    monkeypatch, capsys, error, code
):
    import dpgov.cli as cli

    def app(**_kwargs):
        raise error

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == code
    assert capsys.readouterr().err == f"error: {error}\n"
