"""SHA-256 digests of artifact files, as the ledger's ``facts_bound`` entries record them.

A file's digest is the SHA-256 of its bytes. A folder's (a logged model's files) is the
SHA-256 of one line per file, sorted by path: ``<path relative to the folder> NUL <file
digest> LF``, so renaming, adding, removing or changing any file changes it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(path: Path) -> str | None:
    """The digest of a folder's files (a single file: its digest); None when it holds none."""
    if path.is_file():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(path).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()
