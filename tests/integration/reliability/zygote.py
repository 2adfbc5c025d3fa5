"""A process that imports the training stack once, then forks one child per governed run.

Killing a training process needs a process of its own per run, and each fresh Python process
spends 10-15 s importing torch, Opacus, MLflow and fairlearn before its first step. This one
imports them once (single-threaded, so forking is safe) and forks a child per request; each child
is a complete, independent training process that runs :func:`run_governed` with its own
environment (``DPGOV_FAULT`` ...) and dies however the run makes it die.

Protocol (one JSON object per line): the test writes ``{"env": {...}, "params": {...},
"policy": PATH, "result": PATH}`` to stdin; the zygote answers ``{"pid", "exit", "signal"}``
when the child has ended. The child writes its outcome to ``result``: ``{"ok": true, "summary"}``
or ``{"ok": false, "error": TYPE, "message", "dpgov_error", "exit_code"}``.

Run as a script: ``python zygote.py`` (the test starts it with ``Zygote()``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

THREAD_VARS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TORCH_NUM_THREADS": "1",
}


class Zygote:
    """The test's handle on a zygote process (start once per module; ``close()`` at the end)."""

    def __init__(self, env: dict[str, str] | None = None, ready_timeout: float = 180) -> None:
        full = {**os.environ, **THREAD_VARS, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the children's errors land in the test's captured output
            text=True,
            env=full,
        )
        line = self._readline(ready_timeout)
        if json.loads(line).get("ready") is not True:  # pragma: no cover - start-up failed
            raise RuntimeError(f"zygote did not start: {line!r}")

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"zygote gave no answer within {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote exited (code {self.proc.poll()})")
        return line

    def submit(
        self,
        *,
        params: dict[str, Any],
        policy: str | Path,
        result: str | Path,
        env: dict[str, str] | None = None,
    ) -> None:
        """Fork a child running one governed run (answer with :meth:`wait`)."""
        assert self.proc.stdin is not None
        request = {"env": env or {}, "params": params, "policy": str(policy), "result": str(result)}
        Path(result).unlink(missing_ok=True)
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        self._result = Path(result)

    def wait(self, timeout: float = 240) -> dict[str, Any]:
        """How the child ended (``exit``, ``signal``) and what it wrote (``outcome``)."""
        ended = json.loads(self._readline(timeout))
        path = self._result
        ended["outcome"] = json.loads(path.read_text()) if path.exists() else None
        return ended

    def run(self, *, timeout: float = 240, **request: Any) -> dict[str, Any]:
        """:meth:`submit`, then :meth:`wait`."""
        self.submit(**request)
        return self.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- the zygote itself


def _preload() -> None:
    import mlflow  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    import opacus  # noqa: F401
    import sqlalchemy  # noqa: F401
    import torch

    import dpgov.data.prepared  # noqa: F401
    import dpgov.ledger  # noqa: F401
    import dpgov.tracking.registry  # noqa: F401
    import dpgov.tracking.runs  # noqa: F401
    import dpgov.training.evaluate  # noqa: F401
    import dpgov.training.governed  # noqa: F401
    import dpgov.training.trainer  # noqa: F401

    torch.set_num_threads(1)
    try:
        import psycopg  # noqa: F401
    except ImportError:  # pragma: no cover - PostgreSQL scenarios skip without it
        pass


def _child(request: dict[str, Any]) -> None:
    """One governed run in this (forked) process; its outcome goes to ``request['result']``."""
    os.dup2(2, 1)  # stdout carries the protocol: whatever the run prints goes to stderr
    os.environ.update(request["env"])
    result = Path(request["result"])
    try:
        from dpgov.training.governed import run_governed
        from dpgov.training.params import parse_params

        summary = run_governed(parse_params(request["params"]), request["policy"])
        outcome: dict[str, Any] = {"ok": True, "summary": summary.to_dict()}
    except BaseException as err:  # the outcome is what the test inspects
        from dpgov.errors import DpgovError

        outcome = {
            "ok": False,
            "error": type(err).__name__,
            "message": str(err).strip().splitlines()[0] if str(err).strip() else "",
            "dpgov_error": isinstance(err, DpgovError),
            "exit_code": getattr(err, "exit_code", None),
        }
    result.write_text(json.dumps(outcome, default=str))


def main() -> None:
    os.environ.update(THREAD_VARS)
    _preload()
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: a training process of its own
            code = 0
            try:
                _child(request)
            except BaseException:  # pragma: no cover - reported by the missing result
                code = 3
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        started = time.monotonic()
        _, status = os.waitpid(pid, 0)
        ended = {
            "pid": pid,
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "seconds": time.monotonic() - started,
        }
        if ended["signal"] is not None:
            ended["signal_name"] = signal.Signals(ended["signal"]).name
        print(json.dumps(ended), flush=True)


if __name__ == "__main__":
    main()
