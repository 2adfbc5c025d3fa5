"""One name for one input across commands (docs/INTERFACES.md, "Option names"): `flows ingest`
names the raw table `--data` (as `data prepare`) and the DVC repository `--dvc-root` (as
`audit`); the old spellings `--raw` and `--repo` stay accepted, hidden."""

from __future__ import annotations

import pytest

from tests.cli import run_dpgov


def _options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *cmd: str):
    code, out, _ = run_dpgov(monkeypatch, capsys, *cmd, "--help")
    assert code == 0
    return set(out.replace("│", " ").split())


def test_flows_ingest_shares_the_names_of_data_prepare_and_audit(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    ingest = _options(monkeypatch, capsys, "flows", "ingest")
    assert {"--data", "--dvc-root", "--prepared", "--contract", "--params"} <= ingest
    assert not {"--raw", "--repo"} & ingest  # hidden, still accepted
    assert "--data" in _options(monkeypatch, capsys, "data", "prepare")
    assert "--dvc-root" in _options(monkeypatch, capsys, "audit")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--data", "a.csv", "--raw", "b.csv"], "--data and --raw (its old spelling) differ"),
        (["--repo", "r1", "--dvc-root", "r2", "--data", "a.csv"], "--dvc-root and --repo"),
        ([], "--data: give the dataset's raw table"),
    ],
)
def test_flows_ingest_old_spellings_conflicts_and_a_missing_table_are_one_line(
    monkeypatch, capsys, tmp_path, given, message
) -> None:
    """Refused before any server starts: exit 2, one line."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_dpgov(
        monkeypatch, capsys, "flows", "ingest", "arrival.csv", "--prepared", "prep", *given
    )
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "prefect").exists() and list(tmp_path.iterdir()) == []
