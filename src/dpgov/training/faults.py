"""Test-only fault injection at named points of a governed run (never set outside tests)."""

from __future__ import annotations

import os
from pathlib import Path

FAULT_POINTS = ("before_reserve", "during_train", "after_train", "during_track", "after_register")


def fault_point(name: str) -> None:
    """Test-only fault injection at a named point of a run; does nothing unless ``DPGOV_FAULT``
    names this point (never set outside tests).

    ``DPGOV_FAULT=<point>`` kills this process with SIGKILL there (no handler runs: a power
    loss). With ``DPGOV_FAULT_PAUSE=<folder>`` it instead creates ``<folder>/<point>.reached``
    and waits (up to 10 minutes) for ``<folder>/<point>.go``, so a test can cut a service at
    exactly that point. Points: ``before_reserve`` (nothing charged yet), ``during_train``
    (after the second optimizer step), ``after_train`` (trained, not committed),
    ``during_track`` (committed; run metrics logged, no model version yet), ``after_register``
    (model version registered with its facts; MLflow run not ended).
    """
    if os.environ.get("DPGOV_FAULT") != name:
        return
    pause = os.environ.get("DPGOV_FAULT_PAUSE")
    if not pause:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
        return
    import time

    (Path(pause) / f"{name}.reached").touch()
    deadline = time.monotonic() + 600
    while not (Path(pause) / f"{name}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
