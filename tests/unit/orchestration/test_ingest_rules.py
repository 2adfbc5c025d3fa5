"""Ingest's rules without Prefect: waves, appending arrivals, blocks that must not change."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dpgov.data.ingest import block_changes, plan_waves, publish, stage
from dpgov.errors import UsageError


def test_waves_are_chronological_whole_blocks_as_even_as_greedy_allows() -> None:
    flchain = [("1995", 1004), ("1996", 2747), ("1997", 1080), ("1998-2003", 1312)]
    assert plan_waves(flchain, 3) == [["1995", "1996"], ["1997"], ["1998-2003"]]
    assert plan_waves(flchain, 1) == [["1995", "1996", "1997", "1998-2003"]]
    assert plan_waves(flchain, 4) == [["1995"], ["1996"], ["1997"], ["1998-2003"]]
    even = [(str(y), 100) for y in range(6)]
    assert plan_waves(even, 3) == [["0", "1"], ["2", "3"], ["4", "5"]]


def _assign(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["patient_id", "block", "split"])


def test_block_changes_names_every_way_a_block_could_change() -> None:
    old = _assign([("p1", "1997", "train"), ("p2", "1997", "test"), ("p3", "1996", "train")])
    same_plus_new = _assign([*old.itertuples(index=False), ("p4", "1998", "train")])
    assert block_changes(old, same_plus_new) == []

    regrouped = _assign(
        [("p1", "1997-1998", "train"), ("p2", "1997-1998", "test"), ("p3", "1996", "train")]
    )
    (msg,) = block_changes(old, regrouped)
    assert "regroups existing blocks ('1997' → '1997-1998'" in msg

    joined = _assign([*old.itertuples(index=False), ("p5", "1996", "train")])
    (msg,) = block_changes(old, joined)
    assert "1 new patient(s) would join existing block(s) ['1996']" in msg

    moved_split = _assign([("p1", "1997", "test"), ("p2", "1997", "test"), ("p3", "1996", "train")])
    (msg,) = block_changes(old, moved_split)
    assert "change between train and test" in msg

    dropped = _assign([("p1", "1997", "train"), ("p2", "1997", "test")])
    (msg,) = block_changes(old, dropped)
    assert "missing from the new preparation" in msg


@pytest.fixture
def arrivals(tmp_path: Path) -> tuple[list[Path], Path]:
    from dpgov.testing.sources import make_tabular, tabular_contract, write_yaml

    table = make_tabular(600, n_blocks=3, start_year=2001, seed=3)
    files = []
    for k, years in enumerate([[2001], [2002], [2003]], start=1):
        path = tmp_path / f"a{k}.csv"
        table[table["year"].isin(years)].to_csv(path, index=False)
        files.append(path)
    contract = write_yaml(
        tabular_contract("synth", min_block=10, min_subgroup=2), tmp_path / "c.yaml"
    )
    return files, contract


def test_stage_then_publish_appends_and_finds_new_blocks(tmp_path: Path, arrivals) -> None:
    files, contract = arrivals
    raw, prepared = tmp_path / "repo" / "raw.csv", tmp_path / "repo" / "prepared" / "synth"
    first = publish(stage(files[0], raw=raw, prepared=prepared, contract=contract))
    assert first.new_blocks == ["2001"] and not Path(first.staging).exists()
    second = stage(files[1], raw=raw, prepared=prepared, contract=contract)
    assert second.new_blocks == ["2002"]
    assert second.blocks["2001"] == first.blocks["2001"]
    assert second.data_version != first.data_version
    assert len(pd.read_csv(raw)) == first.n_total  # nothing in place changed before publish
    publish(second)
    assert len(pd.read_csv(raw)) == second.n_total == first.n_total + second.n_arrival


def test_stage_refuses_a_patient_already_ingested(tmp_path: Path, arrivals) -> None:
    files, contract = arrivals
    raw, prepared = tmp_path / "raw.csv", tmp_path / "prepared" / "synth"
    publish(stage(files[0], raw=raw, prepared=prepared, contract=contract))
    before = sorted(p.name for p in (tmp_path / "prepared").iterdir())
    with pytest.raises(UsageError, match=r"patient\(s\) already ingested"):
        stage(files[0], raw=raw, prepared=prepared, contract=contract)
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == before  # no staging left


def test_stage_refuses_columns_that_differ(tmp_path: Path, arrivals) -> None:
    files, contract = arrivals
    raw, prepared = tmp_path / "raw.csv", tmp_path / "prepared" / "synth"
    publish(stage(files[0], raw=raw, prepared=prepared, contract=contract))
    odd = tmp_path / "odd.csv"
    pd.read_csv(files[1]).rename(columns={"lab": "labval"}).to_csv(odd, index=False)
    with pytest.raises(UsageError, match=r"columns differ .*extra \['labval'\], missing \['lab'\]"):
        stage(odd, raw=raw, prepared=prepared, contract=contract)


def test_register_blocks_checks_all_before_writing(tmp_path: Path) -> None:
    from dpgov.data.ingest import register_blocks
    from dpgov.ledger import Ledger

    led = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    assert register_blocks(led, dataset="d", blocks={"a": 10}, data_version="v1") == ["a"]
    with pytest.raises(UsageError, match="registered with 10 patients, the new data gives 11"):
        register_blocks(led, dataset="d", blocks={"b": 5, "a": 11}, data_version="v2")
    assert [b.block for b in led.blocks("d")] == ["a"]  # b was not written either
    assert register_blocks(led, dataset="d", blocks={"a": 10, "b": 5}, data_version="v2") == ["b"]


def test_bundled_cohort_in_three_waves() -> None:
    pytest.importorskip("sksurv", reason="the bundled data needs the demo extra")
    from dpgov.data.ingest import enrollment_waves

    waves = enrollment_waves(3)
    assert [w.blocks for w in waves] == [["1995", "1996"], ["1997"], ["1998-2003"]]
    assert [w.values[0] for w in waves] == [1995, 1997, 1998]
    assert sum(len(w.table) for w in waves) == 7679
