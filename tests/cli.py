"""``dpgov ARGS`` in the test's own process, through the real entry point (``main``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def run_dpgov(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    prefect_defaults: bool = False,
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``dpgov ARGS``. ``prefect_defaults`` sets the Prefect
    settings dpgov chooses when the environment does not (restored after the test)."""
    from dpgov.cli import main

    if prefect_defaults:
        from pipelines.runtime import env_defaults

        for key, value in env_defaults(Path(".")).items():
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["dpgov", *args])
    code = 0
    try:
        main()
    except SystemExit as err:
        code = int(err.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
