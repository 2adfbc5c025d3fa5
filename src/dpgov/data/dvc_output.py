"""Versioning what ``dpgov data prepare`` wrote, as the demo and ingest do.

Outside ``dvc repro`` the prepared folder is recorded in the DVC repository holding the working
directory: an output of a ``dvc.yaml`` stage with ``dvc commit`` of that stage (its
``dvc.lock``), any other folder with ``dvc add`` (its ``.dvc`` file beside the folder), then
pushed to the default remote when one is configured. Inside a stage (``DVC_STAGE`` set by DVC)
nothing is done here: DVC records the stage's outputs itself when the command ends. Either way
``dpgov audit`` then finds the data version every charge on that folder names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpgov.data.ingest import version_with_dvc
from dpgov.data.versioning import default_remote, find_dvc_root
from dpgov.errors import UsageError

DVC_STAGE_ENV = "DVC_STAGE"  # set by DVC for every stage command it runs (dvc/stage/run.py)


@dataclass
class PreparedVersioning:
    """What versioning a prepared folder did: ``how`` is ``dvc add``, ``dvc commit STAGE``,
    ``dvc stage STAGE`` (DVC records it), or None with ``note`` saying why nothing was done."""

    root: str | None
    how: str | None
    pushed: int = 0
    remote: str | None = None
    to_git: list[str] = field(default_factory=list)  # the DVC files to commit to git
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def version_prepared(path: str | Path, *, start: str | Path | None = None) -> PreparedVersioning:
    """Record the prepared folder ``path`` in the DVC repository at or above ``start``
    (default: the working directory), and push it when a default remote is set.

    Raises UsageError when DVC refuses (for example a git-ignored ``.dvc`` file)."""
    target = Path(path).resolve()
    stage = os.environ.get(DVC_STAGE_ENV)
    if stage:
        return PreparedVersioning(
            root=os.environ.get("DVC_ROOT"),
            how=f"dvc stage {stage}",
            note="DVC records this stage's outputs in dvc.lock when the command ends",
        )
    root = find_dvc_root(Path(start) if start is not None else Path.cwd())
    if root is None:
        return PreparedVersioning(
            root=None,
            how=None,
            note="no DVC repository at or above the working directory (`dvc init`): the "
            "data version is not recorded, and `dpgov audit` will report it unknown",
        )
    try:
        rel = target.relative_to(root)
    except ValueError:
        return PreparedVersioning(
            root=str(root),
            how=None,
            note=f"{target} lies outside the DVC repository {root}: the data version is not "
            "recorded, and `dpgov audit` will report it unknown",
        )
    remote = default_remote(root)
    record = version_with_dvc(root, [target], push=False, message="dpgov data")
    if record.committed:
        how = f"dvc commit {record.committed[0]}"
        to_git = ["dvc.lock"]
    else:
        how = "dvc add"
        to_git = [f"{rel.as_posix()}.dvc", (rel.parent / ".gitignore").as_posix()]
        to_git = [p for p in to_git if (root / p).is_file()]
    done = PreparedVersioning(root=str(root), how=how, to_git=to_git)
    if remote is None:
        done.note = "no default DVC remote: recorded, not pushed"
    else:
        # a dvc.yaml beside it makes DVC read a bare path target as a stage name: name the
        # .dvc file (or the stage) instead
        what = record.committed[0] if record.committed else str(target) + ".dvc"
        done.pushed, done.remote = _push(root, what, remote)
    return done


def _push(root: Path, target: str, remote: str) -> tuple[int, str | None]:
    """Push ``target`` (a ``.dvc`` file or a stage) to the default remote, from a repository
    opened after it was recorded (the one that recorded it may keep an index without it)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    dvc_log = logging.getLogger("dvc")  # its INFO hints go to stdout: keep --json parseable
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)
    try:
        with Repo(str(root)) as repo:
            pushed = int(repo.push(targets=[target]) or 0)
            url = repo.config["remote"][remote].get("url")
    except DvcException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"DVC in {root}: push to remote {remote!r} failed: {first}") from err
    finally:
        dvc_log.setLevel(level)
    return pushed, str(url) if url else None
