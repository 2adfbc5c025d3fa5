"""A Prefect server that does not answer: one line naming the URL, exit 2, nothing run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DPGOV_"))},
        "PREFECT_API_URL": url,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "DPGOV_HOME": str(tmp_path / "home"),
    }
    out = subprocess.run(
        [str(BIN / "dpgov"), "flows", "run", "retraining/dpgov-retraining", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: Prefect server at {url} does not answer"
    )
    assert not (tmp_path / "home" / "ledger.db").exists()
