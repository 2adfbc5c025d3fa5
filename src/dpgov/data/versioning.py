"""Data versions: the DVC md5 of prepared outputs, and the DVC remote in ``$DPGOV_HOME``.

The version of a prepared folder is what DVC records for it in ``dvc.lock``: the md5 of the
folder's tree listing (each file's md5 and relative path, sorted, as JSON) with ``.dir`` appended.
It is computed here with DVC's own hashing (``dvc_data``), so it equals the lock entry whenever
the folder on disk is the one DVC recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dpgov import config, yamlio
from dpgov.errors import UsageError

log = logging.getLogger(__name__)

REMOTE_NAME = "local"


def compute_md5(path: str | Path) -> str:
    """DVC's md5 of a file or a folder (``<md5>.dir`` for folders), computed the way DVC does."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import MemoryFileSystem
    from dvc_objects.fs.local import LocalFileSystem

    odb = HashFileDB(MemoryFileSystem(), "memory://dpgov-data-version")
    _, _, obj = build(odb, str(Path(path).resolve()), LocalFileSystem(), "md5", dry_run=True)
    return str(obj.hash_info.value)


def find_dvc_root(start: str | Path) -> Path | None:
    """The nearest folder at or above ``start`` holding a ``.dvc`` folder."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def lock_md5(path: str | Path) -> str | None:
    """The md5 that ``dvc.lock`` records for the output at ``path``, if any."""
    target = Path(path).resolve()
    root = find_dvc_root(target)
    if root is None or not (root / "dvc.lock").is_file():
        return None
    try:
        lock = yamlio.parse_yaml((root / "dvc.lock").read_bytes(), where="dvc.lock")
    except (OSError, UsageError):  # unreadable, not YAML, or refused by the one loader
        return None
    rel = target.relative_to(root).as_posix()
    stages = lock.get("stages", {}) if isinstance(lock, dict) else {}
    for stage in stages.values():
        for out in (stage or {}).get("outs", []) or []:
            if isinstance(out, dict) and str(out.get("path", "")).rstrip("/") == rel:
                md5 = out.get("md5")
                return str(md5) if md5 else None
    return None


def data_version(path: str | Path) -> str:
    """The data version of a prepared folder: its DVC md5 (``<md5>.dir``).

    Computed from the files on disk with DVC's hashing and compared with ``dvc.lock`` when the
    folder is a recorded stage output: a different lock entry means the lock is stale (the
    folder changed since ``dvc repro``), so the value for what is on disk is returned and a
    warning logged.
    """
    target = Path(path)
    if not target.exists():
        raise UsageError(f"prepared data {target}: no such folder")
    computed = compute_md5(target)
    recorded = lock_md5(target)
    if recorded is not None and recorded != computed:
        log.warning(
            "dvc.lock records %s for %s but the folder hashes to %s: run `dvc repro` or "
            "`dvc commit` to record it",
            recorded,
            target,
            computed,
        )
    return computed


def configure_remote(root: str | Path) -> str | None:
    """Point DVC remote ``local`` of the repository at ``root`` to ``config.dvc_remote()``.

    ``.dvc/config`` (committed) names ``../.dpgov/dvc-remote``, the remote in the default home.
    When ``$DPGOV_HOME`` lies elsewhere, the URL is overridden in ``.dvc/config.local`` (not
    committed, per machine). Returns the URL written, or None when nothing needed changing.
    """
    from configobj import ConfigObj

    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        return None
    section = f'remote "{REMOTE_NAME}"'
    url = None
    for name in ("config", "config.local"):
        file = dvc_dir / name
        if file.is_file():
            conf = ConfigObj(str(file))
            url = conf.get(section, {}).get("url", url)
    if url is None:
        return None  # the project uses another remote: leave it alone
    wanted = config.dvc_remote()
    current = Path(url) if Path(url).is_absolute() else (dvc_dir / url)
    if current.resolve() == wanted.resolve():
        return None
    local = ConfigObj(str(dvc_dir / "config.local"))
    local.setdefault(section, {})["url"] = str(wanted)
    local.write()
    return str(wanted)


def default_remote(root: str | Path) -> str | None:
    """The name of the default DVC remote (``core.remote``) of the repository at ``root``, from
    ``.dvc/config`` overridden by ``.dvc/config.local``; None when none is set."""
    from configobj import ConfigObj

    name = None
    for file in (Path(root) / ".dvc" / "config", Path(root) / ".dvc" / "config.local"):
        if file.is_file():
            core = ConfigObj(str(file)).get("core", {})
            name = core.get("remote", name) if isinstance(core, dict) else name
    return str(name) if name else None
