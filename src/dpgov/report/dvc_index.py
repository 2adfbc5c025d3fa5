"""Where the audit looks data versions up: DVC's records, its cache, and local remotes.

A data version is a DVC md5 (``<md5>.dir`` for a folder). It is known when ``dvc.lock`` or a
``.dvc`` file records it, or when the repository's cache or a local remote (including
``$DPGOV_HOME/dvc-remote``) holds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgov import config, yamlio
from dpgov.data.versioning import find_dvc_root
from dpgov.errors import UsageError


@dataclass
class DvcIndex:
    """Where data versions (DVC md5s, ``<md5>.dir`` for folders) can be found: outputs
    recorded in dvc.lock and .dvc files, the repository's cache, and local remotes."""

    root: Path | None = None
    recorded: dict[str, str] = field(default_factory=dict)  # md5 → where it is recorded
    caches: list[Path] = field(default_factory=list)
    remotes: list[Path] = field(default_factory=list)

    def locate(self, version: str) -> str | None:
        if version in self.recorded:
            return self.recorded[version]
        if len(version) < 3 or "/" in version or "\\" in version or version.startswith("."):
            return None
        for kind, folders in (("cache", self.caches), ("remote", self.remotes)):
            for folder in folders:
                for candidate in (
                    folder / "files" / "md5" / version[:2] / version[2:],
                    folder / version[:2] / version[2:],
                ):
                    if candidate.is_file():
                        return f"DVC {kind} {folder}"
        return None

    @property
    def searched(self) -> str:
        parts = []
        if self.root is not None:
            parts.append(f"dvc.lock and .dvc files under {self.root}")
        parts += [f"cache {c}" for c in self.caches] + [f"remote {r}" for r in self.remotes]
        return "; ".join(parts) or "no DVC repository or remote was found"


def dvc_index(root: str | Path | None = None) -> DvcIndex:
    """The index of ``root`` (default: the DVC repository holding the working directory) and
    of the home folder's remote."""
    index = DvcIndex()
    found = Path(root).resolve() if root is not None else find_dvc_root(Path.cwd())
    if found is not None and (found / ".dvc").is_dir():
        index.root = found
        _scan_recorded(found, index)
        cache = found / ".dvc" / "cache"
        if cache.is_dir():
            index.caches.append(cache)
        index.remotes.extend(_local_remotes(found / ".dvc"))
    default = config.dvc_remote()
    if default.is_dir() and all(default.resolve() != r.resolve() for r in index.remotes):
        index.remotes.append(default)
    return index


def _scan_recorded(root: Path, index: DvcIndex) -> None:
    files = []
    lock = root / "dvc.lock"
    if lock.is_file():
        files.append(lock)
    skip = {".dvc", ".git", ".venv", "node_modules", "__pycache__", ".dpgov"}
    for folder, dirs, names in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = [d for d in dirs if d not in skip and depth < 4]
        files += [Path(folder) / n for n in names if n.endswith(".dvc")]
    for file in files:
        try:
            doc = yamlio.parse_yaml(file.read_bytes(), where=str(file))
        except (OSError, UsageError):  # unreadable, not YAML, or refused by the one loader
            continue
        outs: list[Any] = []
        if isinstance(doc, dict):
            outs += doc.get("outs") or []
            for stage in (doc.get("stages") or {}).values():
                if isinstance(stage, dict):
                    outs += stage.get("outs") or []
        for out in outs:
            if isinstance(out, dict) and out.get("md5"):
                rel = file.relative_to(root).as_posix()
                index.recorded.setdefault(str(out["md5"]), f"{rel}: {out.get('path', '')}")


def _local_remotes(dvc_dir: Path) -> list[Path]:
    out: list[Path] = []
    try:
        from configobj import ConfigObj
    except ImportError:  # pragma: no cover - a dependency of dvc
        return out
    urls: dict[str, str] = {}
    for name in ("config", "config.local"):
        file = dvc_dir / name
        if not file.is_file():
            continue
        try:
            conf = ConfigObj(str(file))
        except Exception:
            continue
        for section, values in conf.items():
            if section.startswith("remote") and isinstance(values, dict) and "url" in values:
                urls[section] = str(values["url"])
    for url in urls.values():
        if url.startswith("file://"):
            url = url[len("file://") :]
        elif "://" in url:
            continue  # s3, ssh, ...: not looked into here
        path = Path(url) if Path(url).is_absolute() else dvc_dir / url
        if path.is_dir():
            out.append(path.resolve())
    return out
