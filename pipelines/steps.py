"""The flows' step runner: each step of dpgov's governed run becomes a Prefect task.

:func:`dpgov.training.governed.run_governed` names every step and says which may retry
(reading, validating, the gate); :func:`prefect_step` runs it as a task of the calling flow,
with the retry policy of :mod:`pipelines.tasks` (never retry what spends privacy or records),
and adds its seconds to the flow's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Task, task

from pipelines.runtime import timed
from pipelines.tasks import ONCE, RETRY

T = TypeVar("T")

_TASKS: dict[tuple[str, Callable[..., Any], bool], Task[Any, Any]] = {}


def as_task(name: str, fn: Callable[..., T], *, retry: bool) -> Task[Any, T]:
    """The Prefect task for one step (made once per step, function and retry policy)."""
    key = (name, fn, retry)
    made = _TASKS.get(key)
    if made is None:
        made = _TASKS[key] = task(name=name, **(RETRY if retry else ONCE))(fn)
    return made


def prefect_step(
    name: str, fn: Callable[..., T], /, *args: Any, retry: bool = False, **kwargs: Any
) -> T:
    """Run one step as a task of the current flow (a ``StepRunner``)."""
    with timed(name.replace("-", "_")):
        return as_task(name, fn, retry=retry)(*args, **kwargs)
