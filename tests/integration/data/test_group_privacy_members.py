"""Under a group-privacy contract a patient may hold records in two blocks: prepare registers
them as a member of both, so a charge to each block reaches them (the issue's third Why case:
one sweep on 2001, then one on 2002)."""

from __future__ import annotations

import pandas as pd
import pytest

from dpgov.accounting import DpSgdMechanism, epsilon
from dpgov.data import DataParams, load_prepared, prepare
from dpgov.ledger import Ledger
from dpgov.policy.schema import Budget
from dpgov.testing.sources import make_tabular, tabular_contract, write_yaml

RUN = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=200)
# tight PLD composition (fixed), so the class's ε is epsilon([RUN, RUN]); runs are committed
# in advance as fixed composition requires
BUDGET = Budget(epsilon_per_block=8, delta=1e-5, accountant="pld", composition="fixed")


def test_a_patient_in_two_blocks_is_charged_by_both(tmp_path, dpgov_home) -> None:
    table = make_tabular(300, n_blocks=2, seed=1)  # years 2001 and 2002
    in_2001 = table[table["year"] == 2001].head(40)
    table = pd.concat([table, in_2001.assign(year=2002)], ignore_index=True)
    data = tmp_path / "raw.csv"
    table.to_csv(data, index=False)
    spec = tabular_contract("gp")
    spec["privacy"] = {"max_records_per_patient": 2, "group_privacy": True}
    contract = write_yaml(spec, tmp_path / "gp.yaml")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = prepare(data, contract, out=tmp_path / "p", params=DataParams(), ledger_url=url)
    train = load_prepared(result.path).train
    both = set(train[train["block"] == "2001"]["patient_id"]) & set(
        train[train["block"] == "2002"]["patient_id"]
    )
    assert 20 < len(both) <= 40  # those of the 40 that landed in the training split
    led = Ledger.open(url)
    for block in ("2001", "2002"):
        led.plan_schedule(dataset="gp", blocks=[block], runs=[RUN], budget=BUDGET)
        led.reserve(dataset="gp", blocks=[block], mechanism=RUN, budget=BUDGET)
    classes = {len(c.reservations): c for c in led.patient_classes(BUDGET)}
    assert classes[2].count == len(both)
    twice = epsilon([RUN, RUN], delta=BUDGET.delta)
    assert classes[2].epsilon == pytest.approx(twice, rel=1e-6)
    for status in led.budget(BUDGET, dataset="gp"):  # each block shows its worst member
        if status.split == "train":  # the test blocks beside them hold other patients
            assert status.epsilon_spent == pytest.approx(twice, rel=1e-6)
    assert twice > epsilon([RUN], delta=BUDGET.delta) * 1.2
