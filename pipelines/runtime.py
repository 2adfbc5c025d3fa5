"""Where Prefect runs for dpgov, set up before Prefect is imported.

- :func:`configure_env`: Prefect's home under ``$DPGOV_HOME/prefect``, analytics off, a
  generous start-up timeout for the temporary (ephemeral) server. Values already in the
  environment win, so ``PREFECT_API_URL`` points dpgov at a real server.
- :class:`Api`: the API the flows will talk to. With ``PREFECT_API_URL`` it checks the server
  answers (an unreachable one is a one-line error naming the URL); without, it starts Prefect's
  temporary server **in a background thread**, so its 10-20 s start-up overlaps the imports of
  torch, Opacus, MLflow and Great Expectations instead of adding to them.
- :func:`quiet_console`: Prefect's own console lines (flow and task states, tracebacks of a
  failed task) are kept out of the command line's output, which stays one line on error; they
  still go to the Prefect API (its UI shows them). ``DPGOV_PREFECT_LOGS=1`` shows them.
- :func:`timed` / :func:`start_clock`: seconds spent inside each step, for the summary and the
  benchmark (orchestration = wall time minus the steps).

Nothing here imports Prefect at module level.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from dpgov import config
from dpgov.errors import UsageError

STARTUP_TIMEOUT_S = 180
HEALTH_TIMEOUT_S = 10.0

_CLOCK: ContextVar[dict[str, float] | None] = ContextVar("dpgov_step_clock", default=None)


def env_defaults(home: Path) -> dict[str, str]:
    """The Prefect settings dpgov chooses when the environment does not."""
    return {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(STARTUP_TIMEOUT_S),
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
    }


def configure_env(home: Path | None = None) -> dict[str, str]:
    """Set dpgov's Prefect defaults in ``os.environ`` where unset; returns what was set.

    Must run before ``import prefect`` to take effect (Prefect reads its settings at import).
    """
    chosen = {}
    for key, value in env_defaults(home or config.home()).items():
        if key not in os.environ:
            os.environ[key] = value
            chosen[key] = value
    return chosen


@contextmanager
def scoped_env(home: Path | None = None) -> Iterator[dict[str, str]]:
    """:func:`configure_env`, undone on exit (for use inside another program or a test)."""
    chosen = configure_env(home)
    try:
        yield chosen
    finally:
        for key in chosen:
            os.environ.pop(key, None)


# --------------------------------------------------------------------------- the API


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect's current settings hold it (None: ephemeral)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def check_server(url: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """UsageError naming ``url`` when no Prefect server answers there (any HTTP reply counts
    as an answer: authentication is Prefect's business, not this check's)."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"Prefect server at {url} does not answer ({reason}): start it "
            "(`prefect server start`) or unset PREFECT_API_URL to run on a temporary local one"
        ) from err


class LocalServer:
    """``prefect server start`` on a free loopback port, with its services (the scheduler
    among them: Prefect's temporary server runs none, so cron schedules would never fire),
    state in ``PREFECT_HOME``, output in ``$PREFECT_HOME/server.log``; stopped with this
    process."""

    def __init__(self) -> None:
        self.process: Any = None
        self.url: str | None = None
        self.log: Path | None = None

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        import atexit
        import socket
        import subprocess
        import sys

        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "server.log"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self.stop)
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UsageError(
                    f"prefect server start exited {self.process.returncode}; see {self.log}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    self.url = url
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise UsageError(
            f"the local Prefect server at {url} did not start in {timeout:g} s; see {self.log}"
        )

    def stop(self) -> None:
        import signal

        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except Exception:  # still there: no choice left
            os.killpg(proc.pid, signal.SIGKILL)


class Api:
    """The Prefect API the flows of this process use; :meth:`start` returns at once.

    ``PREFECT_API_URL`` set: that server (checked). Otherwise Prefect's temporary server, or
    with ``scheduler`` a local ``prefect server start`` (:class:`LocalServer`), which this
    process then talks to.
    """

    def __init__(self, *, scheduler: bool = False) -> None:
        self.url: str | None = None
        self.kind: str = "unknown"  # "server" (PREFECT_API_URL), "ephemeral" or "local"
        self.seconds: float = 0.0  # wall time of the check or the start-up
        self.waited: float = 0.0  # of which the caller waited in wait()
        self.scheduler = scheduler
        self.local: LocalServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> Api:
        configured = configured_api_url()
        if configured:
            self.kind, self.url = "server", configured
        else:
            self.kind = "local" if self.scheduler else "ephemeral"
        self._thread = threading.Thread(target=self._run, name="dpgov-prefect-api", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            if self.kind == "server":
                assert self.url is not None
                check_server(self.url)
            elif self.kind == "local":
                self.local = LocalServer()
                self.url = self.local.start()
            else:
                from prefect.server.api.server import SubprocessASGIServer

                server = SubprocessASGIServer()
                server.start()
                self.url = server.api_url
        except BaseException as err:  # reported by wait()
            self._error = err
        finally:
            self.seconds = time.perf_counter() - started

    def wait(self) -> Api:
        """Block until the API answers; UsageError when it cannot."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        t = time.perf_counter()
        self._thread.join()
        self.waited = time.perf_counter() - t
        err = self._error
        if isinstance(err, UsageError):
            raise err
        if err is not None:
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(
                f"the temporary Prefect server did not start ({text}); raise "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL"
            ) from err
        return self

    def describe(self) -> str:
        if self.kind == "server":
            return f"Prefect server {self.url}"
        home = os.environ.get("PREFECT_HOME", "~/.prefect")
        if self.kind == "local":
            ui = str(self.url).removesuffix("/api")
            return f"local Prefect server {self.url} (UI {ui}; state in {home})"
        return f"temporary Prefect server {self.url} (state in {home})"

    @contextmanager
    def active(self) -> Iterator[None]:
        """This process's Prefect settings point at the local server while inside."""
        if self.kind != "local":
            yield
            return
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            yield


def check_deployment_name(name: str) -> str:
    """``FLOW/DEPLOYMENT``, or UsageError (checked before any server is asked)."""
    parts = name.split("/")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise UsageError(
            f"deployment {name!r}: expected FLOW/DEPLOYMENT, e.g. retraining/dpgov-retraining"
        )
    return name


def preload(modules: list[str]) -> float:
    """Import ``modules`` now (while the API starts); returns the seconds it took."""
    import contextlib
    import importlib
    import warnings

    started = time.perf_counter()
    with warnings.catch_warnings():  # import-time warnings of dependencies are not ours to show
        warnings.simplefilter("ignore")
        for name in modules:
            # a missing optional dependency is reported where it is needed
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    return time.perf_counter() - started


HEAVY_MODULES = [
    "torch",
    "opacus",
    "dpgov.training.trainer",
    "dpgov.training.evaluate",
    "mlflow",
    "great_expectations",
    "dpgov.data.validation",
]


# --------------------------------------------------------------------------- console


class _Quiet(logging.Filter):
    """Drops Prefect's records below CRITICAL (they reach the API) and chatter below WARNING
    from libraries that log INFO to the root logger (Great Expectations' "temporary
    directory for ephemeral docs site")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("prefect"):
            return record.levelno >= logging.CRITICAL
        if record.name.startswith("great_expectations"):
            return record.levelno >= logging.WARNING
        return True


_QUIET = _Quiet()


def quiet_console() -> None:
    """Keep Prefect's own log lines off the console for the rest of the process (they still
    reach the Prefect API, whose UI shows them). Idempotent."""
    if os.environ.get("DPGOV_PREFECT_LOGS", "").lower() in ("1", "true", "yes"):
        return
    # prefect.main sets up Prefect's logging (dictConfig replaces the root's handlers): first,
    # so the filter lands on the console handler that stays
    import prefect.main  # noqa: F401

    for name in (None, "prefect", "uvicorn"):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler) and _QUIET not in h.filters:
                h.addFilter(_QUIET)


# --------------------------------------------------------------------------- step clock


def start_clock() -> dict[str, float]:
    """A fresh record of seconds per step for the steps run in this context."""
    clock: dict[str, float] = {}
    _CLOCK.set(clock)
    return clock


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Add the seconds spent in the block to the current clock (if any) under ``step``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        clock = _CLOCK.get()
        if clock is not None:
            clock[step] = clock.get(step, 0.0) + time.perf_counter() - started


def clock_snapshot() -> dict[str, Any]:
    return dict(_CLOCK.get() or {})


# --------------------------------------------------------------------------- one call


def orchestrate(
    call: Any,
    *,
    preload_modules: list[str] | None = None,
    say: Any = None,
    scheduler: bool = False,
) -> tuple[Any, dict[str, float | str | None]]:
    """Run ``call()`` (which runs flows) against the Prefect API, started or checked first.

    Configures the environment, starts the API check or the temporary server in the
    background, imports ``preload_modules`` meanwhile, waits for the API, then calls with
    Prefect's console lines kept quiet. ``scheduler``: without ``PREFECT_API_URL``, start a
    local ``prefect server start`` (its scheduler fires cron schedules) instead of the
    temporary server. Returns ``(result, timings)``: seconds spent starting or checking the
    API, of them waited for, preloading, and in the call.
    """
    configure_env()
    quiet_console()
    api = Api(scheduler=scheduler).start()
    preloaded = preload(preload_modules) if preload_modules else 0.0
    api.wait()
    if say is not None:
        say(f"orchestration: {api.describe()}")
    started = time.perf_counter()
    with api.active():
        result = call()
    return result, {
        "api": api.kind,
        "api_url": api.url,
        "api_seconds": api.seconds,
        "api_waited": api.waited,
        "preload_seconds": preloaded,
        "flow_seconds": time.perf_counter() - started,
    }
