"""Membership beside the chain: which pseudonyms each block holds.

A block's members are stored in ``dpgov_members`` as one blob: the distinct pseudonyms
(``[0-9a-f]{20}``, :data:`~dpgov.ledger.members_state.PSEUDONYM_PATTERN`), sorted, each packed
into its 10 bytes. The *members digest* is the SHA-256 of that blob (equivalently: of the sorted
pseudonyms, each as its 10 bytes, concatenated); the chained ``block_added`` (or
``members_attached``, ``member_erased``) entry holds it, so a membership row edited outside the
ledger no longer matches the chain and :func:`read` refuses it
(:class:`~dpgov.ledger.verified.LedgerInconsistent`, naming the block). Only the digest is on
the chain: a pseudonym can be erased from the table (an erasure entry records the new digests)
while every charge stays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dpgov.errors import UsageError
from dpgov.ledger.members_state import PSEUDONYM_PATTERN, BlockKey, MemberState
from dpgov.ledger.schema import members_t
from dpgov.ledger.verified import LedgerInconsistent

WIDTH = 10  # bytes per packed pseudonym


def pack(members: Iterable[str], *, what: str = "members") -> bytes:
    """The distinct pseudonyms sorted and packed (10 bytes each). UsageError naming the first
    one that is not a pseudonym."""
    if isinstance(members, str | bytes):
        raise UsageError(f"{what} must be a list of pseudonyms, found {members!r}"[:200])
    unique = set()
    match = PSEUDONYM_PATTERN.match
    for m in members:
        if not isinstance(m, str) or not match(m):
            shown = repr(m)[:40]
            raise UsageError(
                f"{what}: {shown} is not a pseudonym (20 characters of 0-9 and a-f; dpgov data "
                f"prepare writes them)"
            )
        unique.add(m)
    return bytes.fromhex("".join(sorted(unique)))


def pack_one(pseudonym: str) -> bytes:
    if not isinstance(pseudonym, str) or not PSEUDONYM_PATTERN.match(pseudonym):
        raise UsageError(
            f"{repr(pseudonym)[:40]} is not a pseudonym (20 characters of 0-9 and a-f)"
        )
    return bytes.fromhex(pseudonym)


def count(blob: bytes) -> int:
    return len(blob) // WIDTH


def digest(blob: bytes) -> str:
    """The members digest of a packed membership."""
    return hashlib.sha256(bytes(blob)).hexdigest()


def members_digest(members: Iterable[str]) -> str:
    """The members digest of pseudonyms (any order, duplicates counted once)."""
    return digest(pack(members))


def pseudonym_sha256(pseudonym: str) -> str:
    """What the chain records of a pseudonym looked up or erased."""
    return hashlib.sha256(pseudonym.encode()).hexdigest()


def as_keys(blob: bytes) -> Any:
    """The packed pseudonyms as a numpy structured array (hi: 8 bytes, lo: 2, big-endian), so
    that ordering the array orders the pseudonyms."""
    import numpy as np

    dtype = np.dtype([("hi", ">u8"), ("lo", ">u2")])
    return np.frombuffer(bytes(blob), dtype=dtype)


def contains(blob: bytes, pseudonym: bytes) -> bool:
    """Is the packed ``pseudonym`` in the sorted packed ``blob``? (binary search)"""
    lo, hi = 0, len(blob) // WIDTH
    while lo < hi:
        mid = (lo + hi) // 2
        here = blob[mid * WIDTH : (mid + 1) * WIDTH]
        if here == pseudonym:
            return True
        if here < pseudonym:
            lo = mid + 1
        else:
            hi = mid
    return False


def remove(blob: bytes, pseudonym: bytes) -> bytes | None:
    """``blob`` without ``pseudonym``; None when it is not there."""
    lo, hi = 0, len(blob) // WIDTH
    while lo < hi:
        mid = (lo + hi) // 2
        here = blob[mid * WIDTH : (mid + 1) * WIDTH]
        if here == pseudonym:
            return blob[: mid * WIDTH] + blob[(mid + 1) * WIDTH :]
        if here < pseudonym:
            lo = mid + 1
        else:
            hi = mid
    return None


def write(conn: Connection, key: BlockKey, domain: str, blob: bytes) -> None:
    """Store (or replace) a block's membership row."""
    conn.execute(
        members_t.delete().where(members_t.c.dataset == key[0], members_t.c.block == key[1])
    )
    conn.execute(
        members_t.insert().values(
            dataset=key[0],
            block=key[1],
            domain=domain,
            count=count(blob),
            digest=digest(blob),
            members=blob,
        )
    )


def read(conn: Connection, ms: MemberState, keys: Sequence[BlockKey]) -> dict[BlockKey, bytes]:
    """The packed membership of each block in ``keys`` that has members, checked against the
    digest the chain holds: a row missing, or edited outside the ledger, is
    :class:`LedgerInconsistent` naming the block (nothing may be charged from it)."""
    want = {k: ms.of(k) for k in keys}
    want = {k: m for k, m in want.items() if m.digest is not None}
    if not want:
        return {}
    c = members_t.c
    found: dict[BlockKey, bytes] = {}
    for ds in sorted({k[0] for k in want}):
        names = sorted(b for d, b in want if d == ds)
        for i in range(0, len(names), 500):
            rows = conn.execute(
                sa.select(c.block, c.members).where(
                    c.dataset == ds, c.block.in_(names[i : i + 500])
                )
            ).all()
            for b, blob in rows:
                found[(ds, b)] = bytes(blob)
    for k, m in want.items():
        blob = found.get(k)
        if blob is None:
            raise LedgerInconsistent(
                f"block {k[1]!r} of dataset {k[0]!r}: its membership is missing from "
                f"dpgov_members (the chain records digest {str(m.digest)[:12]}…, entry {m.seq}); "
                f"nothing is charged (run `dpgov audit`)",
                m.seq,
            )
        if digest(blob) != m.digest:
            raise LedgerInconsistent(
                f"block {k[1]!r} of dataset {k[0]!r}: its membership in dpgov_members does not "
                f"match the digest the chain records at entry {m.seq} (edited outside the "
                f"ledger); nothing is charged (run `dpgov audit`)",
                m.seq,
            )
    return found


@dataclass(frozen=True)
class MembershipProblem:
    """A stored membership that does not match the chain."""

    dataset: str
    block: str
    detail: str

    def line(self) -> str:
        return f"membership of block {self.block!r} of dataset {self.dataset!r}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return {"dataset": self.dataset, "block": self.block, "detail": self.detail}


def problems(conn: Connection, ms: MemberState) -> list[MembershipProblem]:
    """Every block whose stored membership disagrees with the chain (digests recomputed)."""
    c = members_t.c
    rows = {
        (ds, b): (domain, int(n), str(d), bytes(blob))
        for ds, b, domain, n, d, blob in conn.execute(
            sa.select(c.dataset, c.block, c.domain, c.count, c.digest, c.members)
        ).all()
    }
    out: list[MembershipProblem] = []
    for key in sorted(set(rows) | set(ms.blocks)):
        m = ms.blocks.get(key)
        row = rows.get(key)
        if m is None:
            out.append(
                MembershipProblem(key[0], key[1], "stored for a block the chain never registered")
            )
        elif m.digest is None:
            if row is not None:
                out.append(
                    MembershipProblem(
                        key[0], key[1], "stored for a block the chain has no members of"
                    )
                )
        elif row is None:
            out.append(
                MembershipProblem(key[0], key[1], f"missing (the chain records entry {m.seq})")
            )
        else:
            domain, n, d, blob = row
            actual = digest(blob)
            if actual != m.digest:
                out.append(
                    MembershipProblem(
                        key[0],
                        key[1],
                        f"digest of the stored members is {actual[:12]}…, the chain records "
                        f"{m.digest[:12]}… (entry {m.seq}): edited outside the ledger",
                    )
                )
            elif d != m.digest or n != m.count or n != count(blob) or domain != m.domain:
                out.append(
                    MembershipProblem(
                        key[0],
                        key[1],
                        f"stored columns (domain {domain!r}, count {n}, digest {d[:12]}…) differ "
                        f"from the chain (domain {m.domain!r}, count {m.count})",
                    )
                )
    return out


__all__ = [
    "WIDTH",
    "MembershipProblem",
    "as_keys",
    "contains",
    "count",
    "digest",
    "members_digest",
    "pack",
    "pack_one",
    "problems",
    "pseudonym_sha256",
    "read",
    "remove",
    "write",
]
