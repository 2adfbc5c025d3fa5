"""What the chained entries say about membership: each block's domain, split and membership
digest, the pseudonym key's fingerprint, and the seals of the per-class caches.

Applied by :mod:`dpgov.ledger.verified` (whose hash checks run first) for the entry kinds of
per-patient accounting (issue 15):

- ``block_added``: ``domain`` (default: the dataset), ``split`` (default ``train``) and
  ``members_digest`` (null for a block registered without members: a *legacy* block);
- ``members_attached``: the digest of a legacy block's members, attached later;
- ``member_erased``: the new digests (and member counts) of the blocks one pseudonym was erased
  from (the chain holds only the SHA-256 of the pseudonym);
- ``pseudonym_key``: the fingerprint of the deployment's pseudonym key (first one only);
- on the kinds that seal compositions, ``class_composition`` (a history class's composed state
  for an accountant: the digest of its multiset and the SHA-256 of its blob) and, on those and
  the membership kinds, ``class_structure`` (the SHA-256 of the cached class structure of a
  domain, addressed by the digest of the domain's membership digests). A class seal may carry
  the ε its state gives at the charge's δ (``epsilon``, ``delta``): budget reads take it from
  here instead of loading and evaluating the state again (the entry is hash-checked like the
  seal itself);
- on the same kinds, ``class_rdp``: a history class's summed RDP vector at a grid of orders,
  by the digest of its multiset (``{"multiset", "orders", "rdp"}``; an infinite order as
  null), as the entry that charged it computed it. Budget reads take the adaptive filter's
  figure from it, so that ``dpgov budget`` needs no accounting library; a reservation and a
  calibration compute their own (they never trust a seal for enforcement).

Nothing here trusts a table: :mod:`dpgov.ledger.classes` uses a cached structure or state only
when a seal recorded here vouches for its bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

BlockKey = tuple[str, str]
PSEUDONYM_PATTERN = re.compile(r"^[0-9a-f]{20}$")  # = dpgov.data.pseudonym.PSEUDONYM_PATTERN
DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# classes_sealed: only seals of class structures (Ledger.seal_classes), no state change
MEMBER_KINDS = frozenset({"members_attached", "member_erased", "pseudonym_key", "classes_sealed"})


@dataclass(frozen=True)
class VMembership:
    """A block's membership as chained: ``digest`` None for a legacy block (no members)."""

    domain: str
    split: str
    digest: str | None
    count: int  # members now (erasure lowers it; a legacy block: 0)
    seq: int  # the entry that set the digest


@dataclass(frozen=True)
class MemberState:
    blocks: dict[BlockKey, VMembership] = field(default_factory=dict)
    key: tuple[str, int] | None = None  # (fingerprint, seq of the pseudonym_key entry)
    # (class key, accountant key) -> (multiset digest, SHA-256 of the state blob)
    class_seals: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    structure_seals: dict[str, str] = field(default_factory=dict)  # structure key -> SHA-256
    # (multiset digest, accountant key, δ) -> ε, as the entry that composed it recorded
    epsilons: dict[tuple[str, str, float], float] = field(default_factory=dict)
    # (multiset digest, orders) -> the summed RDP vector at those orders, as recorded
    rdp: dict[tuple[str, tuple[float, ...]], tuple[float, ...]] = field(default_factory=dict)

    def of(self, key: BlockKey) -> VMembership:
        found = self.blocks.get(key)
        if found is None:  # a block_added entry always records one
            return VMembership(key[0], "train", None, 0, 0)
        return found

    def domain_blocks(self, domain: str) -> list[BlockKey]:
        return sorted(k for k, m in self.blocks.items() if m.domain == domain)

    def domains(self) -> list[str]:
        return sorted({m.domain for m in self.blocks.values()})

    def legacy_of(self, domain: str) -> list[BlockKey]:
        """The blocks without members that may hold patients of ``domain``: those of the domain,
        and those of any dataset with a block in the domain (a block registered before its
        dataset declared its id domain holds the dataset's patients, whatever the domain)."""
        datasets = {k[0] for k, m in self.blocks.items() if m.domain == domain}
        return sorted(
            k
            for k, m in self.blocks.items()
            if m.digest is None and (m.domain == domain or k[0] in datasets)
        )

    def linked_domains(self, key: BlockKey) -> list[str]:
        """The domains a block's charges may reach: its own; for a block without members also
        every domain with a block in its dataset."""
        m = self.of(key)
        if m.digest is not None:
            return [m.domain]
        return sorted({m.domain} | {x.domain for k, x in self.blocks.items() if k[0] == key[0]})


EMPTY_MEMBERS = MemberState()


def _digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or not DIGEST_PATTERN.match(value):
        raise ValueError(f"{what} is {value!r}, not a SHA-256 digest")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is {value!r}, not a name")
    return value


class MemberBuilder:
    """Applies entries to a copy of a :class:`MemberState`. ``bad(detail)`` makes the
    :class:`~dpgov.ledger.verified.LedgerInconsistent` of an entry the ledger never writes."""

    def __init__(self, base: MemberState) -> None:
        self.blocks = dict(base.blocks)
        self.key = base.key
        self.class_seals = dict(base.class_seals)
        self.structure_seals = dict(base.structure_seals)
        self.epsilons = dict(base.epsilons)
        self.rdp = dict(base.rdp)

    def freeze(self) -> MemberState:
        return MemberState(
            self.blocks, self.key, self.class_seals, self.structure_seals, self.epsilons, self.rdp
        )

    def block_added(self, seq: int, key: BlockKey, patients: int, p: dict[str, Any]) -> None:
        domain = p.get("domain")
        domain = key[0] if domain is None else _text(domain, "'domain'")
        split = p.get("split")
        split = "train" if split is None else _text(split, "'split'")
        digest = p.get("members_digest")
        if digest is not None:
            digest = _digest(digest, "'members_digest'")
        self.blocks[key] = VMembership(domain, split, digest, patients if digest else 0, seq)

    def apply(self, seq: int, kind: str, p: dict[str, Any], known: set[BlockKey], bad: Any) -> None:
        """Apply a membership kind (``known``: the registered blocks)."""
        if kind == "members_attached":
            key = (_text(p.get("dataset"), "'dataset'"), _text(p.get("block"), "'block'"))
            m = self.blocks.get(key)
            if key not in known or m is None:
                raise bad(f"attaches members to block {key[0]}/{key[1]}, never registered")
            if m.digest is not None:
                raise bad(f"attaches members to block {key[0]}/{key[1]}, which has members")
            count = p["patients"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"'patients' is {count!r}, not a positive integer")
            digest = _digest(p["members_digest"], "'members_digest'")
            domain = p.get("domain")
            domain = m.domain if domain is None else _text(domain, "'domain'")
            self.blocks[key] = VMembership(domain, m.split, digest, count, seq)
        elif kind == "member_erased":
            domain = _text(p.get("domain"), "'domain'")
            _digest(p.get("pseudonym_sha256"), "'pseudonym_sha256'")
            changed = p["blocks"]
            if not isinstance(changed, list) or not changed:
                raise ValueError(f"'blocks' is {changed!r}, not a list of blocks")
            for item in changed:
                if not isinstance(item, dict):
                    raise ValueError(f"block {item!r} is not an object")
                key = (_text(item.get("dataset"), "'dataset'"), _text(item.get("block"), "'block'"))
                m = self.blocks.get(key)
                if m is None or m.digest is None or m.domain != domain:
                    raise bad(f"erases from block {key[0]}/{key[1]}, which has no members")
                count = item["members"]
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise ValueError(f"'members' is {count!r}, not a count")
                digest = _digest(item["members_digest"], "'members_digest'")
                self.blocks[key] = VMembership(m.domain, m.split, digest, count, seq)
        elif kind == "pseudonym_key":
            fingerprint = _text(p.get("fingerprint"), "'fingerprint'")
            if self.key is not None:
                raise bad(f"records a second pseudonym key (the first is at entry {self.key[1]})")
            self.key = (fingerprint, seq)

    def seals(self, p: dict[str, Any]) -> None:
        """The class seals an entry carries (any kind that may seal)."""
        seals = p.get("class_composition")
        if seals is not None:
            if not isinstance(seals, list):
                raise ValueError(f"'class_composition' is {seals!r}, not a list of seals")
            for s in seals:
                if not isinstance(s, dict):
                    raise ValueError(f"class seal {s!r} is not an object")
                cls, acc = _text(s.get("class"), "'class'"), _text(s.get("accountant"), "'acc'")
                multiset, state = _digest(s.get("multiset"), "'multiset'"), s.get("state")
                self.class_seals[(cls, acc)] = (multiset, _digest(state, "'state'"))
                if "epsilon" in s:  # the class's ε at the charge's δ, as composed then
                    eps, delta = s["epsilon"], s.get("delta")
                    if not (isinstance(eps, float) and isinstance(delta, float)) or not all(
                        math.isfinite(v) and v >= 0 for v in (eps, delta)
                    ):
                        raise ValueError(f"class seal ε {eps!r} at δ {delta!r} is not a number")
                    self.epsilons[(multiset, acc, delta)] = eps
        rdp = p.get("class_rdp")
        if rdp is not None:
            if not isinstance(rdp, list):
                raise ValueError(f"'class_rdp' is {rdp!r}, not a list of RDP vectors")
            for item in rdp:
                multiset, orders, vector = _rdp_seal(item)
                self.rdp[(multiset, orders)] = vector
        structures = p.get("class_structure")
        if structures is not None:
            if not isinstance(structures, list):
                raise ValueError(f"'class_structure' is {structures!r}, not a list of seals")
            for s in structures:
                if not isinstance(s, dict):
                    raise ValueError(f"structure seal {s!r} is not an object")
                key = _digest(s.get("key"), "'key'")
                self.structure_seals[key] = _digest(s.get("state"), "'state'")


def rdp_seal(multiset: str, orders: tuple[float, ...], vector: list[float]) -> dict[str, Any]:
    """The ``class_rdp`` item of a multiset's RDP vector (infinite orders written as null:
    canonical JSON has no infinity)."""
    return {
        "multiset": multiset,
        "orders": [float(a) for a in orders],
        "rdp": [None if math.isinf(v) else float(v) for v in vector],
    }


def _rdp_seal(item: Any) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    if not isinstance(item, dict):
        raise ValueError(f"RDP seal {item!r} is not an object")
    multiset = _digest(item.get("multiset"), "'multiset'")
    orders, vector = item.get("orders"), item.get("rdp")
    if not isinstance(orders, list) or not isinstance(vector, list) or len(orders) != len(vector):
        raise ValueError(f"RDP seal of {multiset}: orders and vector are not lists of one length")
    if not orders or not all(isinstance(a, float) and math.isfinite(a) and a > 1 for a in orders):
        raise ValueError(f"RDP seal of {multiset}: orders {orders!r} are not numbers > 1")
    out = []
    for v in vector:
        if v is None:
            out.append(math.inf)
        elif isinstance(v, float) and math.isfinite(v) and v >= 0:
            out.append(v)
        else:
            raise ValueError(f"RDP seal of {multiset}: {v!r} is not an RDP value")
    return multiset, tuple(orders), tuple(out)


__all__ = [
    "EMPTY_MEMBERS",
    "MEMBER_KINDS",
    "PSEUDONYM_PATTERN",
    "MemberBuilder",
    "MemberState",
    "VMembership",
    "rdp_seal",
]
