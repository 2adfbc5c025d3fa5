"""A governed run with ``train.membership_attack: true`` (issue 18 item 3): the loss attack on
the DP model and the non-private reference, before the reference is discarded; its figures
logged as non-private metrics (tagged), in the run summary and output, and the privacy
statement lists them as not covered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dpgov.contracts import MEMBERSHIP_NOT_COVERED, TAG_MEMBERSHIP_ATTACK
from dpgov.ledger import Ledger
from dpgov.tracking import runs
from dpgov.training.governed import run_governed


def _judged(
    world_data: Any, fraction: float, seed: int, min_n: int
) -> tuple[set[tuple[str, str]], int]:
    """The subgroups with at least ``min_n`` members and non-members, counted from the data,
    and the number of training patients."""
    from dpgov.training.inputs import arrays
    from dpgov.training.validation_split import split_validation

    members, nonmembers = split_validation(arrays(world_data, "train"), fraction, seed)
    out = set()
    for col in members.sensitive.columns:
        m = members.sensitive[col].value_counts()
        n = nonmembers.sensitive[col].value_counts()
        out |= {(col, g) for g in m.index if m[g] >= min_n and n.get(g, 0) >= max(min_n, 11)}
    return out, len(members.y) + len(nonmembers.y)


def test_a_run_attacks_both_models_and_logs_non_private_figures(
    home: Any,
    world: Any,
    world_data: Any,
    run_options: Any,
    small_params: Callable[..., Any],
    capsys: Any,
) -> None:
    ledger = Ledger.open()
    params = world.params(
        small_params(reference=True, membership_attack=True, validation_fraction=0.3)
    )
    summary = run_governed(params, ledger=ledger, options=run_options)
    m = summary.membership
    assert m is not None and m["private"] is False and m["nonmember_split"] == "validation"
    assert [x["model"] for x in m["models"]] == ["dp", "reference"]
    judged, n_train = _judged(
        world_data, 0.3, 0, 30
    )  # the default policy's fairness.min_group_size
    assert judged  # the world has subgroups to judge
    for model in m["models"]:
        rows = model["rows"]
        assert (rows[0]["attribute"], rows[0]["members"]) == ("all", m["members"])
        assert {(r["attribute"], r["group"]) for r in rows[1:]} == judged
        assert len(rows) == 1 + len(judged)  # one row per judged subgroup
        for r in rows:
            assert 0.0 <= r["auc"] <= 1.0 and r["false_positives"] <= 10
            assert r["tpr_lo"] <= r["tpr"] <= r["tpr_hi"]
    assert m["members"] + m["nonmembers"] == n_train  # every training patient once

    run = runs.read_run(summary.run_id)
    assert run["tags"][TAG_MEMBERSHIP_ATTACK] == "nonprivate"
    dp_all = m["models"][0]["rows"][0]
    assert np.isclose(run["metrics"]["nonprivate.mia.dp.all.all.auc"], dp_all["auc"])
    assert "nonprivate.mia.reference.all.all.tpr_lo" in run["metrics"]
    assert runs.read_json(summary.run_id, "membership_attack.json")["models"][1]["model"] == (
        "reference"
    )
    statement = runs.read_json(summary.run_id, "privacy_statement.json")
    assert statement["not_covered"][-1] == MEMBERSHIP_NOT_COVERED
    facts = runs.read_json(summary.run_id, "candidate_facts.json")["membership_attack"]
    assert facts["attack"] == "loss-threshold" and facts["nonmember_split"] == "validation"
    assert len(facts["rows"]) == sum(len(x["rows"]) for x in m["models"])

    from dpgov.cli.run import _render

    capsys.readouterr()
    _render(summary.to_dict())
    out = capsys.readouterr().out
    assert "Membership inference (loss-threshold attack; NON-PRIVATE figures)" in out
    assert "reference" in out and f"{dp_all['auc']:.3f}" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_without_the_key_no_attack_runs(
    home: Any, world: Any, run_options: Any, small_params: Callable[..., Any]
) -> None:
    ledger = Ledger.open()
    summary = run_governed(world.params(small_params()), ledger=ledger, options=run_options)
    assert summary.membership is None and "membership" not in summary.to_dict()
    run = runs.read_run(summary.run_id)
    assert TAG_MEMBERSHIP_ATTACK not in run["tags"]
    assert not any(k.startswith("nonprivate.mia") for k in run["metrics"])
    statement = runs.read_json(summary.run_id, "privacy_statement.json")
    assert MEMBERSHIP_NOT_COVERED not in statement["not_covered"]
