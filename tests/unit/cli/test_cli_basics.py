"""The command line's basics: --version, -h, shell completion, the home from a project's
dpgov.toml, and the notice when a command creates a new, empty ledger."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli import run_dpgov


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no DPGOV_HOME, ledger URL or tracking URI in the environment."""
    for name in ("DPGOV_LEDGER_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    # empty counts as unset; monkeypatch restores the variable after the test, including the
    # DPGOV_HOME that main() exports from a dpgov.toml (it must not leak into later tests)
    monkeypatch.setenv("DPGOV_HOME", "")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_version_and_short_help(monkeypatch, capsys) -> None:
    from dpgov import __version__

    code, out, _ = run_dpgov(monkeypatch, capsys, "--version")
    assert (code, out.strip()) == (0, f"dpgov {__version__}")
    code, out, _ = run_dpgov(monkeypatch, capsys, "budget", "-h")
    assert code == 0 and "budget [OPTIONS]" in out and "--json" in out


def test_shell_completion_script() -> None:
    """As a user gets it: the console script prints a bash completion script for dpgov."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("dpgov", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run(
        [exe, "--show-completion", "bash"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "complete" in out.stdout and "_dpgov_completion" in out.stdout


def test_project_file_names_the_home_from_any_folder_below(bare: Path, monkeypatch, capsys) -> None:
    (bare / "dpgov.toml").write_text('home = "state"\n')
    deeper = bare / "notebooks" / "week1"
    deeper.mkdir(parents=True)
    monkeypatch.chdir(deeper)
    code, _, err = run_dpgov(monkeypatch, capsys, "budget", "--json")
    assert code == 0, err
    assert (bare / "state" / "ledger.db").is_file()
    assert not (deeper / ".dpgov").exists()
    assert os.environ["DPGOV_HOME"] == str((bare / "state").resolve())  # children inherit it
    # the environment still wins over the file
    other = bare / "elsewhere"
    monkeypatch.setenv("DPGOV_HOME", str(other))
    assert run_dpgov(monkeypatch, capsys, "budget", "--json")[0] == 0
    assert (other / "ledger.db").is_file()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('hme = "x"\n', "unknown key 'hme'"),
        ("home = [\n", "not a valid TOML file"),
        ("home = 3\n", "home must be a folder path"),
    ],
)
def test_a_bad_project_file_is_one_line_and_exit_2(
    bare: Path, monkeypatch, capsys, body: str, says: str
) -> None:
    (bare / "dpgov.toml").write_text(body)
    code, _, err = run_dpgov(monkeypatch, capsys, "budget")
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert not (bare / ".dpgov").exists()  # nothing written


def test_a_new_empty_ledger_is_announced_once(bare: Path, monkeypatch, capsys) -> None:
    code, _, err = run_dpgov(monkeypatch, capsys, "budget")
    assert code == 0
    assert f"no ledger was at {bare / '.dpgov' / 'ledger.db'}: created a new, empty one" in err
    code, _, err = run_dpgov(monkeypatch, capsys, "budget")
    assert code == 0 and "created a new" not in err
