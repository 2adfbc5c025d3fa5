"""Check: every released version's facts are the ones the ledger bound (issue 13).

For each registry alias (a release), the version's ``facts_bound`` entry must exist, must
bind a private version (a reservation; never the non-private reference), and the version's
artifact files as the store holds them now (facts, privacy statement, weights) must have the
bound SHA-256 digests; otherwise ``release_facts_mismatch``. A version that was recalled
(``recall`` entry) but still holds a release alias is ``release_recalled``. The approvals the
release counted must have been made by authenticated identities (an approval entry with no
``identity`` is reported as ``release_facts_mismatch`` too: it could have been typed by anyone),
and signed approvals must verify against the key the policy in force lists.

Pure over what was read: the ledger rows, the registry's aliases, and the digests read for the
released versions (:func:`release_digests`, the only reading part).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dpgov.gate.signatures import approval_message, verify
from dpgov.ledger.releases import DIGEST_KEYS
from dpgov.policy import LoadedPolicy
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import RawEntry
from dpgov.tracking.records import ModelRecord
from dpgov.tracking.registry import Registry

Digests = Mapping[tuple[str, str], Mapping[str, str | None]]


def release_digests(models: Sequence[ModelRecord], tracking_uri: str | None) -> dict[Any, Any]:
    """The current artifact digests of every version a registry alias points at."""
    registry = Registry(tracking_uri)
    out: dict[tuple[str, str], Mapping[str, str | None]] = {}
    for m in models:
        for version in sorted(set(m.aliases.values())):
            try:
                out[(m.name, version)] = registry.artifact_digests(m.name, version)
            except Exception:
                out[(m.name, version)] = {}
    return out


def _by_version(rows: Sequence[RawEntry], kind: str) -> dict[tuple[str, str], RawEntry]:
    out: dict[tuple[str, str], RawEntry] = {}
    for r in rows:
        if r.kind == kind and r.payload is not None:
            key = (str(r.payload.get("model")), str(r.payload.get("version")))
            out.setdefault(key, r)
    return out


def _signature_problem(r: RawEntry, bound: RawEntry, policy: LoadedPolicy) -> str | None:
    p, b = r.payload or {}, bound.payload or {}
    key = policy.policy.approvals.ssh_keys.get(str(p.get("by")))
    if key is None:
        return None
    if not p.get("signature"):
        return f"approval entry {r.seq} by {p.get('by')} is not signed"
    message = approval_message(
        decision=r.kind,
        model=str(b.get("model")),
        version=str(b.get("version")),
        run_id=str(b.get("run_id")),
        reservation=b.get("reservation"),
        facts_sha256=(b.get("digests") or {}).get("candidate_facts"),
    )
    if not verify(message, str(p["signature"]), principal=str(p.get("by")), public_key=key):
        return f"approval entry {r.seq} by {p.get('by')}: the signature does not verify"
    return None


def check_release_facts(
    rows: Sequence[RawEntry],
    models: Sequence[ModelRecord],
    digests: Digests,
    policy: LoadedPolicy,
) -> list[Finding]:
    bound = _by_version(rows, "facts_bound")
    recalls = _by_version(rows, "recall")
    approvals: dict[tuple[str, str], list[RawEntry]] = {}
    for r in rows:
        if r.kind == "approval" and r.payload is not None:
            key = (str(r.payload.get("model")), str(r.payload.get("version")))
            approvals.setdefault(key, []).append(r)
    out: list[Finding] = []
    for m in models:
        for alias, version in sorted(m.aliases.items()):
            key = (m.name, version)
            where = {"model": m.name, "version": version, "alias": alias}
            rec = recalls.get(key)
            if rec is not None:
                out.append(
                    finding(
                        "release_recalled",
                        f"{m.name} version {version} holds @{alias} but was recalled at entry "
                        f"{rec.seq} ({(rec.payload or {}).get('reason')}): its statement is void",
                        seq=rec.seq,
                        time=rec.time,
                        **where,
                    )
                )
            b = bound.get(key)
            problems: list[str] = []
            if b is None or b.payload is None:
                problems.append("no facts_bound entry: its facts were never bound to the chain")
            else:
                now = digests.get(key, {})
                for d in DIGEST_KEYS:
                    if now.get(d) != (b.payload.get("digests") or {}).get(d):
                        problems.append(f"its {d.replace('_', ' ')} differ from entry {b.seq}")
                if not b.payload.get("private"):
                    problems.append(f"entry {b.seq} binds it as the non-private reference")
                for a in approvals.get(key, []):
                    if not (a.payload or {}).get("identity"):
                        problems.append(f"approval entry {a.seq} names no authenticated identity")
                    why = _signature_problem(a, b, policy)
                    if why:
                        problems.append(why)
            if problems:
                out.append(
                    finding(
                        "release_facts_mismatch",
                        f"{m.name} @{alias} (version {version}): " + "; ".join(problems),
                        seq=b.seq if b is not None else None,
                        **where,
                    )
                )
    return out
