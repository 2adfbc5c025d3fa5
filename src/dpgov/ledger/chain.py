"""The hash chain: how an entry's hash is computed and how a chain is verified.

hash_n = SHA-256 of the canonical JSON of (seq, kind, payload, time, actor, prev_hash), with
prev_hash of the first entry = 64 zeros. Editing, deleting, inserting or reordering any entry
breaks the chain at that entry. With ``DPGOV_LEDGER_HMAC_KEY`` set, every entry also carries
HMAC-SHA-256(key, hash), so rewriting the whole chain needs the key too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, no NaN; floats written with repr (lossless)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(
    *, seq: int, kind: str, payload: dict[str, Any], time: str, actor: str, prev_hash: str
) -> str:
    envelope = {
        "seq": seq,
        "kind": kind,
        "payload": payload,
        "time": time,
        "actor": actor,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical(envelope).encode()).hexdigest()


def hmac_key() -> bytes | None:
    key = os.environ.get("DPGOV_LEDGER_HMAC_KEY")
    return key.encode() if key else None


def sign(digest: str, key: bytes | None) -> str | None:
    if key is None:
        return None
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str
    payload: dict[str, Any]
    time: str
    actor: str
    prev_hash: str
    hash: str
    signature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "payload": self.payload,
            "time": self.time,
            "actor": self.actor,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "signature": self.signature,
        }


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    reason: str | None = None
    unsigned: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "unsigned": self.unsigned,
        }


def verify_chain(
    rows: Iterable[tuple[int, str, str, str, str, str, str, str | None]], key: bytes | None = None
) -> Verification:
    """Verify rows ``(seq, kind, payload_json, time, actor, prev_hash, hash, signature)``
    given in storage order of ``seq``. Stops at the first bad entry and names it."""
    expected_prev, expected_seq, count, unsigned = GENESIS, 1, 0, 0
    seen_signed = False
    for seq, kind, payload_text, time, actor, prev_hash, digest, signature in rows:
        count += 1

        def bad(
            reason: str, at: int = seq, n: int = count, head: str = expected_prev
        ) -> Verification:
            return Verification(ok=False, entries=n, head=head, first_bad_seq=at, reason=reason)

        if seq != expected_seq:
            what = "missing (deleted?)" if seq > expected_seq else "duplicated or out of order"
            return bad(
                f"expected entry {expected_seq}, found {seq}: entry {expected_seq} is {what}",
                at=min(seq, expected_seq),
            )
        if prev_hash != expected_prev:
            return bad(
                f"entry {seq} does not follow entry {seq - 1}: its previous hash "
                f"{prev_hash[:12]}… differs from {expected_prev[:12]}… (inserted, "
                f"reordered, or the one before was altered)"
            )
        try:
            payload = json.loads(payload_text)
        except (TypeError, ValueError):
            return bad(f"entry {seq}: payload is not valid JSON (edited)")
        recomputed = entry_hash(
            seq=seq, kind=kind, payload=payload, time=time, actor=actor, prev_hash=prev_hash
        )
        if recomputed != digest:
            return bad(f"entry {seq} ({kind}): content does not match its hash (edited)")
        if key is not None:
            if signature is None:
                if seen_signed:
                    return bad(
                        f"entry {seq} ({kind}): unsigned after signed entries (signature stripped?)"
                    )
                unsigned += 1
            elif not hmac.compare_digest(signature, sign(digest, key) or ""):
                return bad(
                    f"entry {seq} ({kind}): HMAC signature does not match (rewritten "
                    f"without the key)"
                )
            else:
                seen_signed = True
        expected_prev, expected_seq = digest, seq + 1
    return Verification(ok=True, entries=count, head=expected_prev, unsigned=unsigned)
