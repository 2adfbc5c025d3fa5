"""The hash chain: how an entry's hash is computed, how entries are signed, how a chain is
verified.

hash_n = SHA-256 of the canonical JSON of (seq, kind, payload, time, actor, prev_hash), with
prev_hash of the first entry = 64 zeros. Editing, deleting, inserting or reordering any entry
breaks the chain at that entry.

Signatures. With ``DPGOV_LEDGER_HMAC_KEY`` set, every entry also carries HMAC-SHA-256(key,
hash) in its ``signature`` column (outside the hash). A signature over entry n authenticates
every entry before it too, through the prev_hash links. Three chained entry kinds record the
key's life, so that dropping signatures is itself detected (their meanings never change):

- ``signing_enabled`` ``{"algorithm": "hmac-sha256", "key": FP}``: from this entry on (itself
  included) every entry is signed, by the key whose fingerprint (:func:`fingerprint`) is FP.
  Written by the first append made with a key (:mod:`dpgov.ledger.appending`). An unsigned
  entry after it fails verification, with or without the key at hand.
- ``key_rotated`` ``{"algorithm": "hmac-sha256", "previous": FP_OLD, "key": FP_NEW}``: signed
  by the old key; every later entry by the new one.
- ``restored`` ``{"backup_seq": N, "backup_hash": H, "lost_through": M, ...}``: the ledger was
  restored from a backup whose head was entry N (hash H); entries N+1..M, anchored before the
  restore, are lost. The entry takes seq M+1 and follows entry N (prev_hash H): no sequence
  number ever names two entries, so anchors taken before the restore stay unambiguous. This is
  the only place where the sequence may jump.

Entries signed before any ``signing_enabled`` entry (ledgers written before dpgov recorded its
key in the chain) keep their old meaning: a signature present must match a key given, and an
unsigned entry after a signed one fails when a key is given.

A key's fingerprint is HMAC-SHA-256(key, "dpgov ledger key fingerprint"), first 32 hex digits:
it names the key without revealing it (it tells no more about the key than any signature does).
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
ALGORITHM = "hmac-sha256"
SIGNING_ENABLED = "signing_enabled"
KEY_ROTATED = "key_rotated"
RESTORED = "restored"
KEY_KINDS = (SIGNING_ENABLED, KEY_ROTATED)
KEY_ENV = "DPGOV_LEDGER_HMAC_KEY"
OLD_KEYS_ENV = "DPGOV_LEDGER_HMAC_OLD_KEYS"  # comma-separated earlier keys, for verifying
FINGERPRINT_LEN = 32


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


def fingerprint(key: bytes) -> str:
    """The name of a key in the chain (never the key)."""
    return hmac.new(key, b"dpgov ledger key fingerprint", hashlib.sha256).hexdigest()[
        :FINGERPRINT_LEN
    ]


@dataclass(frozen=True)
class Keyring:
    """The keys at hand: ``current`` signs new entries; ``previous`` only verify older ones."""

    current: bytes | None
    previous: tuple[bytes, ...] = ()

    def all(self) -> tuple[bytes, ...]:
        return ((self.current,) if self.current else ()) + self.previous

    def by_fingerprint(self) -> dict[str, bytes]:
        return {fingerprint(k): k for k in self.all()}

    def current_fingerprint(self) -> str | None:
        return fingerprint(self.current) if self.current else None


def keyring() -> Keyring | None:
    """The keys from the environment: ``DPGOV_LEDGER_HMAC_KEY`` (current) and
    ``DPGOV_LEDGER_HMAC_OLD_KEYS`` (earlier keys, comma-separated); None when neither is set."""
    current = os.environ.get(KEY_ENV) or None
    old = tuple(
        k.strip().encode() for k in os.environ.get(OLD_KEYS_ENV, "").split(",") if k.strip()
    )
    if current is None and not old:
        return None
    return Keyring(current.encode() if current else None, old)


hmac_key = keyring  # the name callers used when there was one key


def sign(digest: str, key: bytes | None) -> str | None:
    if key is None:
        return None
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def _matches(signature: str, digest: str, key: bytes) -> bool:
    return hmac.compare_digest(signature, sign(digest, key) or "")


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
class KeyEvent:
    """A ``signing_enabled`` or ``key_rotated`` entry: from ``seq`` on, ``key`` signs."""

    seq: int
    kind: str
    key: str
    previous: str | None
    time: str
    actor: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "key": self.key,
            "previous": self.previous,
            "time": self.time,
            "actor": self.actor,
        }


@dataclass(frozen=True)
class Restore:
    """A ``restored`` entry: entries ``backup_seq + 1`` .. ``lost_through`` were lost."""

    seq: int
    backup_seq: int
    backup_hash: str
    lost_through: int
    time: str
    actor: str

    @property
    def lost(self) -> int:
        return self.lost_through - self.backup_seq

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "backup_seq": self.backup_seq,
            "backup_hash": self.backup_hash,
            "lost_through": self.lost_through,
            "time": self.time,
            "actor": self.actor,
        }


@dataclass(frozen=True)
class Verification:
    """The chain's verification. ``ok``: every hash and link holds, every entry the chain says
    is signed carries a signature, and every signature checked matches. ``checked`` signatures
    were verified with a key at hand; ``unchecked`` ones were present but their key was not
    given; ``unsigned`` counts entries that need none (before signing was enabled)."""

    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    reason: str | None = None
    unsigned: int = 0
    problems: list[str] = field(default_factory=list)
    head_seq: int = 0
    checked: int = 0
    unchecked: int = 0
    key_given: bool = False
    key_events: tuple[KeyEvent, ...] = ()
    legacy_signed: int = 0  # signed before any signing_enabled entry
    restores: tuple[Restore, ...] = ()

    @property
    def signing_seq(self) -> int | None:
        """Where signing was enabled (None: never)."""
        return self.key_events[0].seq if self.key_events else None

    @property
    def active_key(self) -> str | None:
        """The fingerprint of the key that signs the head (None: the chain names none)."""
        return self.key_events[-1].key if self.key_events else None

    @property
    def signatures(self) -> str:
        """``none`` (never signed), ``legacy`` (signed, but no key recorded in the chain),
        ``unchecked`` (signed, no key given for any of it), ``partial`` (some signatures'
        keys not given), ``checked``."""
        if not self.key_events and not self.legacy_signed:
            return "none"
        if not self.key_events:
            return "legacy"
        if self.checked == 0:
            return "unchecked"
        return "partial" if self.unchecked else "checked"

    def signature_note(self) -> str:
        """One sentence on what was, and was not, verified of the signatures."""
        s = self.signatures
        if s == "none":
            if self.key_given:
                return (
                    f"a key is set, but this ledger never enrolled one: none of its "
                    f"{self.entries} entries is signed (no {SIGNING_ENABLED} entry), so a "
                    f"rewrite is caught only by the anchors; the next append enrolls the key"
                )
            return "signatures: none (this ledger has never been signed)"
        if s == "legacy":
            checked = "checked" if self.key_given else "NOT checked (no key given)"
            return (
                f"{self.legacy_signed} entries signed before dpgov recorded its key in the "
                f"chain: signatures {checked}; stripped signatures would not be noticed until "
                f"the next append with the key enrolls it"
            )
        since = f"the ledger signs every entry since entry {self.signing_seq}"
        if s == "unchecked":
            return (
                f"signatures NOT checked: {since} (key {self.active_key}), but no key for "
                f"them was given (set {KEY_ENV}); every entry since carries a signature"
            )
        if s == "partial":
            return (
                f"signatures partly checked: {since}; {self.checked} checked, "
                f"{self.unchecked} NOT checked (their key was not given: set {OLD_KEYS_ENV})"
            )
        return f"signatures checked: {since}, {self.checked} signatures verified"

    def signatures_problem(self) -> str | None:
        """Why signatures fail a policy that requires them (None: they meet it)."""
        if not self.key_events:
            return (
                "the policy requires signatures, but this ledger has never enrolled a signing key"
            )
        if self.unchecked or not self.checked:
            return f"the policy requires signatures, and {self.signature_note()}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "head_seq": self.head_seq,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "unsigned": self.unsigned,
            "signatures": {
                "status": self.signatures,
                "note": self.signature_note(),
                "key_given": self.key_given,
                "signing_since": self.signing_seq,
                "active_key": self.active_key,
                "checked": self.checked,
                "unchecked": self.unchecked,
                "legacy_signed": self.legacy_signed,
                "keys": [k.to_dict() for k in self.key_events],
            },
            "restores": [r.to_dict() for r in self.restores],
        }


def _key_event(seq: int, kind: str, payload: Any, active: str | None) -> KeyEvent | str:
    """The key event an entry records, or why it is malformed."""
    if not isinstance(payload, dict) or payload.get("algorithm") != ALGORITHM:
        algo = payload.get("algorithm") if isinstance(payload, dict) else None
        return f"entry {seq} ({kind}): unknown signing algorithm {algo!r}"
    key = payload.get("key")
    if not isinstance(key, str) or len(key) != FINGERPRINT_LEN:
        return f"entry {seq} ({kind}): no key fingerprint"
    if kind == SIGNING_ENABLED:
        if active is not None:
            return (
                f"entry {seq}: signing enabled again while key {active} signs (a key "
                f"changes only by a {KEY_ROTATED} entry)"
            )
        return KeyEvent(seq, kind, key, None, "", "")
    if active is None:
        return f"entry {seq}: {KEY_ROTATED} before signing was enabled"
    if payload.get("previous") != active:
        return (
            f"entry {seq}: {KEY_ROTATED} from key {payload.get('previous')!r}, but key "
            f"{active} was signing"
        )
    return KeyEvent(seq, kind, key, active, "", "")


def _restore(seq: int, payload: Any, expected_seq: int, expected_prev: str) -> Restore | None:
    """The restore a ``restored`` entry at a jump in the sequence declares, if well formed."""
    if not isinstance(payload, dict):
        return None
    b, h, m = payload.get("backup_seq"), payload.get("backup_hash"), payload.get("lost_through")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (b, m)):
        return None
    if b != expected_seq - 1 or h != expected_prev or m != seq - 1 or m < b:
        return None
    return Restore(seq, b, h, m, "", "")  # type: ignore[arg-type]


def verify_chain(
    rows: Iterable[tuple[int, str, str, str, str, str, str, str | None]],
    key: Keyring | bytes | None = None,
) -> Verification:
    """Verify rows ``(seq, kind, payload_json, time, actor, prev_hash, hash, signature)``
    given in storage order of ``seq``, with the keys at hand. Stops at the first bad entry
    and names it."""
    ring = Keyring(key) if isinstance(key, bytes) else key
    keys = ring.by_fingerprint() if ring is not None else {}
    any_key = ring.all() if ring is not None else ()
    expected_prev, expected_seq, count, unsigned = GENESIS, 1, 0, 0
    checked = unchecked = legacy = 0
    events: list[KeyEvent] = []
    restores: list[Restore] = []
    head_seq = 0

    def result(ok: bool, n: int, head: str, **failure: Any) -> Verification:
        return Verification(
            ok=ok,
            entries=n,
            head=head,
            **failure,
            unsigned=unsigned,
            head_seq=head_seq,
            checked=checked,
            unchecked=unchecked,
            key_given=bool(any_key),
            key_events=tuple(events),
            legacy_signed=legacy,
            restores=tuple(restores),
        )

    def bad(reason: str, at: int, n: int, head: str) -> Verification:
        return result(False, n, head, first_bad_seq=at, reason=reason)

    for seq, kind, payload_text, time, actor, prev_hash, digest, signature in rows:
        count += 1
        try:
            payload = json.loads(payload_text)
        except (TypeError, ValueError):
            payload = None
        if seq != expected_seq:
            restore = (
                _restore(seq, payload, expected_seq, expected_prev)
                if kind == RESTORED and seq > expected_seq
                else None
            )
            if restore is None:
                what = "missing (deleted?)" if seq > expected_seq else "duplicated or out of order"
                return bad(
                    f"expected entry {expected_seq}, found {seq}: entry {expected_seq} is {what}",
                    min(seq, expected_seq),
                    count,
                    expected_prev,
                )
        if prev_hash != expected_prev:
            return bad(
                f"entry {seq} does not follow entry {head_seq}: its previous hash "
                f"{prev_hash[:12]}… differs from {expected_prev[:12]}… (inserted, "
                f"reordered, or the one before was altered)",
                seq,
                count,
                expected_prev,
            )
        if payload is None:
            return bad(
                f"entry {seq}: payload is not valid JSON (edited)", seq, count, expected_prev
            )
        recomputed = entry_hash(
            seq=seq, kind=kind, payload=payload, time=time, actor=actor, prev_hash=prev_hash
        )
        if recomputed != digest:
            return bad(
                f"entry {seq} ({kind}): content does not match its hash (edited)",
                seq,
                count,
                expected_prev,
            )
        # signing_enabled is signed by the key it enrolls; key_rotated by the key it retires
        event: KeyEvent | str | None = None
        if kind in KEY_KINDS:
            event = _key_event(seq, kind, payload, events[-1].key if events else None)
            if isinstance(event, str):
                return bad(event, seq, count, expected_prev)
            event = KeyEvent(seq, kind, event.key, event.previous, time, actor)
            if kind == SIGNING_ENABLED:
                events.append(event)
        if events:
            active = events[-1].key
            if signature is None:
                return bad(
                    f"entry {seq} ({kind}) is unsigned, but the ledger signs every entry since "
                    f"entry {events[0].seq} (signature stripped?)",
                    seq,
                    count,
                    expected_prev,
                )
            if active in keys:
                if not _matches(signature, digest, keys[active]):
                    return bad(
                        f"entry {seq} ({kind}): HMAC signature does not match key {active} "
                        f"(rewritten without the key)",
                        seq,
                        count,
                        expected_prev,
                    )
                checked += 1
            else:
                unchecked += 1
        elif signature is None:
            if legacy and any_key:
                return bad(
                    f"entry {seq} ({kind}): unsigned after signed entries (signature stripped?)",
                    seq,
                    count,
                    expected_prev,
                )
            unsigned += 1
        else:
            legacy += 1
            if any_key and not any(_matches(signature, digest, k) for k in any_key):
                return bad(
                    f"entry {seq} ({kind}): HMAC signature does not match (rewritten "
                    f"without the key)",
                    seq,
                    count,
                    expected_prev,
                )
        if isinstance(event, KeyEvent) and kind == KEY_ROTATED:
            events.append(event)
        if kind == RESTORED:
            r = _restore(seq, payload, expected_seq, expected_prev)
            if r is None:
                return bad(
                    f"entry {seq} ({kind}) does not name the entry it follows as the head of "
                    f"its backup",
                    seq,
                    count,
                    expected_prev,
                )
            restores.append(
                Restore(r.seq, r.backup_seq, r.backup_hash, r.lost_through, time, actor)
            )
        expected_prev, expected_seq, head_seq = digest, seq + 1, seq
    return result(True, count, expected_prev)
