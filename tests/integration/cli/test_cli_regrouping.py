"""The issue's Why case (issue 15) through the command line, on the bundled flchain cohort:
prepare, charge, prepare again under a contract with other fixed edges (`block.edges: [1997]`:
regrouped blocks over the same patients). The new blocks start from their members' histories:
a run planned to the limit as if they were fresh is refused, one calibrated against the worst
class is not, and no patient ends over the limit."""

from __future__ import annotations

import json

import pytest
import yaml

from dpgov.accounting import DpSgdMechanism
from dpgov.data.flchain import CONTRACT_YAML
from tests.cli import run_dpgov
from tests.filter_reference import filter_eps

SMALL = ["--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "1000"]  # PLD ε ≈ 1.83
PLAN = ["--sample-rate", "0.01", "--steps", "1000"]


@pytest.fixture
def cli(monkeypatch, capsys, home, tmp_path):
    monkeypatch.delenv("DPGOV_PSEUDONYM_KEY", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        return run_dpgov(monkeypatch, capsys, *args)

    return run


def _json(cli, *args: str) -> dict:
    rc, text, err = cli(*args, "--json")
    assert rc == 0, err
    return json.loads(text)


def test_regrouped_blocks_inherit_their_patients_spend(cli, tmp_path) -> None:
    first = _json(cli, "data", "prepare", "--out", str(tmp_path / "p600"))
    assert sorted(first["blocks"]) == ["1995", "1996", "1997", "1998-2003"]
    old = sorted(first["blocks"])
    blocks = [x for b in old for x in ("--block", b)]
    spent = _json(cli, "ledger", "reserve", "--dataset", "flchain", *blocks, *SMALL)
    before = max(spent["epsilon_after"].values())
    small = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=1000)
    assert before == pytest.approx(filter_eps([small], 1e-5), rel=1e-9)  # the enforced figure

    contract = yaml.safe_load(CONTRACT_YAML)
    contract["block"]["edges"] = [1997]  # the same patients, cut into two blocks
    regrouped = tmp_path / "flchain-2.yaml"
    regrouped.write_text(yaml.safe_dump(contract))
    again = _json(
        cli, "data", "prepare", "--contract", str(regrouped), "--out", str(tmp_path / "p2")
    )
    new = sorted(again["blocks"])
    assert new == ["1995-1996", "1997-2003"]
    assert again["registered"] == new + [f"test-{b}" for b in new]  # and their test blocks

    budget = _json(cli, "budget", "--dataset", "flchain")
    rows = {b["block"]: b for b in budget["datasets"][0]["blocks"]}
    for b in new:  # never from zero: the members' history comes with them
        assert rows[b]["charges"] == 0
        assert rows[b]["epsilon_spent"] == pytest.approx(before, rel=1e-6)

    # a run planned to the limit as if the new blocks were fresh (with the charge above, every
    # patient would be at ε ≈ 8.1): refused, nothing charged
    fresh = _json(cli, "calibrate", "--target-epsilon", "8", *PLAN)["noise_multiplier"]
    sigma = ["--noise-multiplier", f"{fresh:.6f}"]
    plan = [x for b in new for x in ("--block", b)]
    rc, _, err = cli("ledger", "reserve", "--dataset", "flchain", *plan, *sigma, *PLAN)
    assert rc == 1 and "8" in err, err
    # calibrated against the worst class: allowed, and every patient stays within 8
    worst = _json(cli, "calibrate", "--target-epsilon", "8", "--dataset", "flchain", *plan, *PLAN)
    assert worst["noise_multiplier"] > fresh
    sigma = ["--noise-multiplier", f"{worst['noise_multiplier']:.6f}"]
    _json(cli, "ledger", "reserve", "--dataset", "flchain", *plan, *sigma, *PLAN)
    (dom,) = _json(cli, "budget", "--patients")["domains"]
    assert dom["domain"] == "flchain" and dom["patients_over_limit"] == 0
    assert 7.5 < dom["epsilon_max"] <= 8 * (1 + 1e-6)
    assert dom["patients"] == sum(first["blocks"].values()) + first["n_test"]  # test too
