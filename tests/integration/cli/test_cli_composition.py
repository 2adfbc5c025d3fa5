"""The composition rule on the command line (issue 16): `dpgov budget` shows both figures,
`dpgov ledger plan` commits a schedule, a fixed-mode reservation outside it is refused (exit 1)
and inside it admitted by PLD; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import yaml

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.cli._output import eps_up
from tests.cli import run_dpgov
from tests.filter_reference import filter_eps

RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=200)
RESERVE = [
    "ledger", "reserve", "--dataset", "d", "--block", "b1",
    "--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "200", "--json",
]  # fmt: skip


@pytest.fixture
def cli(dpgov_home, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "240")  # every column of the budget table, untruncated

    def call(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args)

    assert (
        call("ledger", "add-block", "--dataset", "d", "--block", "b1", "--patients", "300")[0] == 0
    )
    return call


def policy_file(tmp_path, **budget) -> str:
    from dpgov.policy.load import packaged_policy_path

    data = yaml.safe_load(packaged_policy_path().read_text())
    data["budget"].update(budget)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def entries(cli) -> int:
    return len(json.loads(cli("ledger", "show", "--json")[1])["entries"])


def test_budget_shows_both_figures_and_the_rule(cli):
    assert cli(*RESERVE)[0] == 0
    code, out, _ = cli("budget", "--json")
    assert code == 0
    block = json.loads(out)["datasets"][0]["blocks"][0]
    assert block["composition"] == "adaptive"
    assert block["epsilon_spent"] == block["epsilon_spent_adaptive"]
    assert block["epsilon_spent_adaptive"] == pytest.approx(filter_eps([RUN], 1e-5), rel=1e-9)
    assert block["epsilon_spent_fixed"] == pytest.approx(epsilon([RUN], delta=1e-5), rel=1e-6)
    code, table, _ = cli("budget")
    assert code == 0
    for column in ("rule", "adapt", "fixed", "adapt: RDP filter"):  # short headers, explained
        assert column in table
    assert eps_up(block["epsilon_spent_adaptive"]) in table
    assert eps_up(block["epsilon_spent_fixed"]) in table


def test_fixed_mode_needs_a_committed_schedule(cli, tmp_path):
    assert cli("policy", "set", policy_file(tmp_path, composition="fixed"), "--reason", "t")[0] == 0
    before = entries(cli)
    code, _, err = cli(*RESERVE)
    assert code == 1 and "no committed schedule" in err and len(err.strip().splitlines()) == 1
    assert entries(cli) == before  # nothing charged
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(
        "dataset: d\nblocks: [b1]\nruns:\n"
        "  - {noise_multiplier: 1.0, sample_rate: 0.01, steps: 200}\n"
    )
    code, out, err = cli("ledger", "plan", str(schedule), "--json")
    assert code == 0, err
    assert json.loads(out)["runs"] == [RUN.to_dict()]
    code, out, err = cli(*RESERVE)
    assert code == 0, err
    assert json.loads(out)["epsilon_after"]["b1"] == pytest.approx(
        epsilon([RUN], delta=1e-5), rel=1e-6
    )
    block = json.loads(cli("budget", "--json")[1])["datasets"][0]["blocks"][0]
    assert block["composition"] == "fixed"
    assert block["epsilon_spent"] == block["epsilon_spent_fixed"]
    assert block["epsilon_spent_adaptive"] > block["epsilon_spent_fixed"]
    assert cli(*RESERVE)[0] == 1  # its one slot is taken


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset: d\nblocks: [b1]\nruns: []\n", "'runs' must be a non-empty list"),
        ("dataset: d\nblocks: [b1]\nruns: [{sigma: 1}]\n", "unknown key 'sigma'"),
        ("dataset: d\nblocks: [nope]\nruns: [{noise_multiplier: 1, sample_rate: 0.1, steps: 3}]\n",
         "unknown block 'nope'"),
    ],
)  # fmt: skip
def test_bad_schedules_are_one_line_exit_2(cli, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = entries(cli)
    code, _, err = cli("ledger", "plan", str(path))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert entries(cli) == before


def test_an_unknown_composition_mode_is_one_line_exit_2(cli, tmp_path):
    before = entries(cli)
    code, _, err = cli(
        "policy", "set", policy_file(tmp_path, composition="sometimes"), "--reason", "t"
    )
    assert code == 2 and "composition must be 'adaptive' or 'fixed'" in err, err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli("policy", "set", policy_file(tmp_path, orders=[4, 2]), "--reason", "t")
    assert code == 2 and "orders must be sorted" in err, err
    assert entries(cli) == before
