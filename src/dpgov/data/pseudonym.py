"""Pseudonymous patient ids: a keyed hash (keyed BLAKE2b, a MAC) of the id's *domain* and the
source id, 80 bits.

The domain is the namespace the source ids come from (the contract's ``patient_id_domain``,
e.g. ``mrn@hospital-a``; default the contract's ``dataset``), not the prepared dataset's name:
the same patient gets the same pseudonym in every dataset, preparation and arrival of one
domain, which is what lets the ledger follow a patient across blocks (docs/data.md).

The key is the deployment's: ``DPGOV_PSEUDONYM_KEY``, else the key file
``$DPGOV_HOME/pseudonym.key`` (32 random bytes from :mod:`secrets`, created once, atomically,
mode 0600; a key file other users may read is refused). There is no built-in key. Without the key
the pseudonyms cannot be linked back to source ids. The ledger records the key's
:func:`fingerprint` (a labelled SHA-256, never the key) and refuses a different key, so a lost or
changed key is noticed instead of silently breaking the linkage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpgov import config
from dpgov.errors import UsageError

ENV_KEY = "DPGOV_PSEUDONYM_KEY"
KEY_FILE = "pseudonym.key"
KEY_BYTES = 32
PSEUDONYM_CHARS = 20  # hex characters kept: 80 bits
PSEUDONYM_PATTERN = r"^[0-9a-f]{20}$"
METHOD = "keyed BLAKE2b of (domain, source id), 80 bits"
_FINGERPRINT_LABEL = b"dpgov pseudonym key fingerprint v1\x00"


@dataclass(frozen=True)
class PseudonymKey:
    """The deployment's pseudonym key, where it came from, and its fingerprint."""

    key: bytes = field(repr=False)  # never shown
    source: str  # "env DPGOV_PSEUDONYM_KEY" | "key file $DPGOV_HOME/pseudonym.key"
    fingerprint: str


def fingerprint(key: bytes) -> str:
    """A labelled SHA-256 of the key (64 hex digits): names the key, does not reveal it."""
    return hashlib.sha256(_FINGERPRINT_LABEL + key).hexdigest()


def key_path() -> Path:
    return config.home() / KEY_FILE


def load_key(*, create: bool = True) -> PseudonymKey:
    """The deployment's key: ``DPGOV_PSEUDONYM_KEY``, else ``$DPGOV_HOME/pseudonym.key``
    (created once when ``create``). UsageError for a key file others may read, an empty one,
    or none where ``create`` is false."""
    env = os.environ.get(ENV_KEY)
    if env:
        key = env.encode()
        return PseudonymKey(key, f"env {ENV_KEY}", fingerprint(key))
    path = key_path()
    if not path.exists():
        if not create:
            raise UsageError(
                f"no pseudonym key: set {ENV_KEY} or restore the key file {path} "
                "(dpgov data prepare creates it once)"
            )
        _create_key_file(path)
    key = _read_key_file(path)
    return PseudonymKey(key, f"key file $DPGOV_HOME/{KEY_FILE}", fingerprint(key))


def _create_key_file(path: Path) -> None:
    """Write 32 random bytes to a temporary file created with O_EXCL and mode 0600, then link
    it into place (atomic: it fails if another process created the key first, which then
    wins, and no reader ever sees a half-written key)."""
    tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(6)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # created concurrently: that key wins
            os.link(tmp, path)
    except OSError as err:
        why = err.strerror or err
        raise UsageError(f"pseudonym key file {path}: cannot create ({why})") from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _read_key_file(path: Path) -> bytes:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"pseudonym key file {path} is accessible by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}"
            )
        key = path.read_bytes()
    except OSError as err:
        raise UsageError(f"pseudonym key file {path}: cannot read ({err.strerror or err})") from err
    if not key:
        raise UsageError(f"pseudonym key file {path} is empty: restore it from a backup")
    return key


def _mac_key(key: bytes) -> bytes:
    """BLAKE2b takes keys of at most 64 bytes: longer ones are hashed down first."""
    return key if len(key) <= 64 else hashlib.blake2b(key).digest()


def pseudonym(domain: str, source_id: str, key: bytes | None = None) -> str:
    """The pseudonym of one source id of ``domain`` (default key: :func:`load_key`)."""
    msg = f"{domain}\x1f{source_id}".encode()
    mac_key = _mac_key(key if key is not None else load_key().key)
    return hashlib.blake2b(msg, key=mac_key, digest_size=PSEUDONYM_CHARS // 2).hexdigest()


def pseudonymise(domain: str, ids: Any, key: bytes | None = None) -> Any:
    """Map a pandas Series of source ids of ``domain`` to pseudonyms (equal ids give equal
    pseudonyms)."""
    import numpy as np
    import pandas as pd

    mac_key = _mac_key(key if key is not None else load_key().key)
    prefix = f"{domain}\x1f"
    size = PSEUDONYM_CHARS // 2
    blake = hashlib.blake2b
    codes, uniques = pd.factorize(ids.astype(str), sort=False)
    mapped = np.asarray(
        [
            blake(f"{prefix}{u}".encode(), key=mac_key, digest_size=size).hexdigest()
            for u in uniques
        ],
        dtype=object,
    )
    return pd.Series(mapped[codes], index=ids.index, dtype=object)
