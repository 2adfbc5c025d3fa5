"""One Prefect test harness per test process, shared by every fixture that asks for it.

``prefect_test_harness`` must never be nested: it swaps Prefect's settings for a temporary
server. Two session fixtures (this directory's and another test module's) may both want it;
the first to arrive starts it, the last to leave stops it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack

STARTUP_TIMEOUT_S = 240

_stack: ExitStack | None = None
_users = 0


def isolate_prefect_home() -> None:
    """Keep Prefect's files out of ~/.prefect (call before Prefect is imported)."""
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="dpgov-test-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "240")


def import_prefect() -> None:
    """Import Prefect (and set up its logging) now, outside any test.

    ``prefect.main`` configures logging with ``dictConfig`` on its first import, which closes
    every existing handler; absl's handler (imported with dp_accounting) then closes the stream
    it holds unless that is the current ``sys.stderr``. Inside a test using capsys, that stream
    is pytest's global capture file, and every later test fails at teardown ("I/O operation on
    closed file"). At collection ``sys.stderr`` is that very stream, so nothing is closed.
    """
    isolate_prefect_home()
    import prefect.main  # noqa: F401


def api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url)


def session() -> Iterator[str]:
    """Yield the API URL of the process's one harness (started on first use)."""
    global _stack, _users
    if _stack is None:
        import_prefect()
        from prefect.testing.utilities import prefect_test_harness

        stack = ExitStack()
        stack.enter_context(prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_S))
        _stack = stack
    _users += 1
    try:
        yield api_url()
    finally:
        _users -= 1
        if _users == 0 and _stack is not None:
            stack, _stack = _stack, None
            stack.close()


import_prefect()  # at collection, before any test captures stderr
