"""A process that imports the training stack once, then forks one child per task.

Killing a training process needs a process of its own per run, and each fresh Python process
spends 10-15 s importing torch, Opacus, MLflow and fairlearn before its first step. The zygote
imports them once (single-threaded, so forking is safe) and forks a child per request; each child
is a complete, independent process (its own database connections, its own environment, e.g.
``DPGOV_FAULT``) that runs one function of :mod:`tests.integration.reliability.workloads` and
dies however the task makes it die. Several children may run at once.

Protocol, one JSON object per line: the test writes ``{"task": NAME, "env": {...}, "result":
PATH, ...}``; the zygote answers ``{"result": PATH, "pid", "exit", "signal"}`` when that child
has ended. The child writes its outcome to ``result`` (see ``workloads``).

Run as a script: ``python zygote.py`` (the test starts it with ``Zygote()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

THREAD_VARS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
REPO = Path(__file__).resolve().parents[3]


class Zygote:
    """The test's handle on a zygote process (one per test session; ``close()`` at the end)."""

    def __init__(self, env: dict[str, str] | None = None, ready_timeout: float = 180) -> None:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        full = {**os.environ, **THREAD_VARS, "PYTHONPATH": path, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the children's errors land in the test's captured output
            text=True,
            env=full,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._answers: dict[str, dict[str, Any]] = {}
        threading.Thread(target=self._read, daemon=True).start()
        first = self._next(ready_timeout)
        if first.get("ready") is not True:  # pragma: no cover - start-up failed
            raise RuntimeError(f"zygote did not start: {first!r}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"zygote gave no answer within {timeout:g} s") from None
        if line is None:
            raise RuntimeError(f"zygote exited (code {self.proc.poll()})")
        return json.loads(line)

    def submit(self, *, result: str | Path, task: str = "governed_run", **request: Any) -> str:
        """Fork a child running ``workloads.<task>(request)``; returns the key for :meth:`wait`
        (the result path, where the child writes its outcome)."""
        assert self.proc.stdin is not None
        key = str(result)
        Path(key).unlink(missing_ok=True)
        line = json.dumps({**request, "task": task, "result": key}, default=str)
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self._last = key
        return key

    def wait(self, key: str | None = None, timeout: float = 240) -> dict[str, Any]:
        """How the child ended (``exit``, ``signal``) and what it wrote (``outcome``)."""
        key = key or self._last
        deadline = time.monotonic() + timeout
        while key not in self._answers:
            answer = self._next(max(0.1, deadline - time.monotonic()))
            self._answers[answer["result"]] = answer
        ended = self._answers.pop(key)
        path = Path(key)
        ended["outcome"] = json.loads(path.read_text()) if path.exists() else None
        return ended

    def run(self, *, timeout: float = 240, **request: Any) -> dict[str, Any]:
        """:meth:`submit`, then :meth:`wait`."""
        return self.wait(self.submit(**request), timeout)

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
    import mlflow
    import mlflow.pytorch
    import opacus  # noqa: F401
    import sqlalchemy  # noqa: F401
    import torch

    import dpgov.data.prepared_data
    import dpgov.ledger
    import dpgov.tracking.registry
    import dpgov.tracking.runs
    import dpgov.training.evaluate
    import dpgov.training.governed
    import dpgov.training.trainer
    import tests.integration.reliability.workloads  # noqa: F401

    torch.set_num_threads(1)
    with contextlib.suppress(ImportError):  # PostgreSQL scenarios skip without it
        import psycopg  # noqa: F401
    del mlflow, dpgov


def _child(request: dict[str, Any]) -> int:
    os.dup2(2, 1)  # stdout carries the protocol: whatever the task prints goes to stderr
    os.environ.update(request.get("env") or {})
    from tests.integration.reliability import workloads

    getattr(workloads, request["task"])(request)
    return 0


def main() -> None:
    os.environ.update(THREAD_VARS)
    _preload()
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    children: dict[int, tuple[str, float]] = {}
    pending = b""
    stdin_open = True
    while stdin_open or children:
        if stdin_open:
            ready, _, _ = select.select([0], [], [], 0.05)
            if ready:
                chunk = os.read(0, 65536)
                stdin_open = bool(chunk)
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:  # the child: a process of its own
                        code = 3
                        try:
                            code = _child(request)
                        finally:
                            sys.stdout.flush()
                            sys.stderr.flush()
                            os._exit(code)
                    children[pid] = (request["result"], time.monotonic())
        else:
            time.sleep(0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            result, started = children.pop(pid)
            ended: dict[str, Any] = {
                "result": result,
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
