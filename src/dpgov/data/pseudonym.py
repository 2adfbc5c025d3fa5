"""Pseudonymous patient ids: a keyed hash (keyed BLAKE2b, a MAC) of the dataset name and
source id, 80 bits.

Without the key the pseudonyms cannot be linked back to source ids, nor across datasets. The key
comes from ``DPGOV_PSEUDONYM_KEY``; without it a built-in key is used, which is public and only
fit for public data such as the bundled cohort (meta.json records which one was used, never the
key). Prepared data stays reproducible as long as the key stays the same.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

ENV_KEY = "DPGOV_PSEUDONYM_KEY"
_BUILTIN_KEY = b"dpgov-builtin-pseudonym-key-v1 (public: for public data only)"
PSEUDONYM_CHARS = 20  # hex characters kept: 80 bits
PSEUDONYM_PATTERN = r"^[0-9a-f]{20}$"


def key_source() -> str:
    return f"env {ENV_KEY}" if os.environ.get(ENV_KEY) else "built-in public key"


def _key() -> bytes:
    env = os.environ.get(ENV_KEY)
    return env.encode() if env else _BUILTIN_KEY


METHOD = "keyed BLAKE2b of (dataset, source id), 80 bits"


def _mac_key(key: bytes) -> bytes:
    """BLAKE2b takes keys of at most 64 bytes: longer ones are hashed down first."""
    return key if len(key) <= 64 else hashlib.blake2b(key).digest()


def pseudonym(dataset: str, source_id: str, key: bytes | None = None) -> str:
    msg = f"{dataset}\x1f{source_id}".encode()
    mac = hashlib.blake2b(msg, key=_mac_key(key or _key()), digest_size=PSEUDONYM_CHARS // 2)
    return mac.hexdigest()


def pseudonymise(dataset: str, ids: Any) -> Any:
    """Map a pandas Series of source ids to pseudonyms (equal ids give equal pseudonyms)."""
    import numpy as np
    import pandas as pd

    key = _mac_key(_key())
    prefix = f"{dataset}\x1f"
    size = PSEUDONYM_CHARS // 2
    blake = hashlib.blake2b
    codes, uniques = pd.factorize(ids.astype(str), sort=False)
    mapped = np.asarray(
        [blake(f"{prefix}{u}".encode(), key=key, digest_size=size).hexdigest() for u in uniques],
        dtype=object,
    )
    return pd.Series(mapped[codes], index=ids.index, dtype=object)
