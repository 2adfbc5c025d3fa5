"""What the ledger bound about a model version, checked against the registry now.

At tracking time the ledger records a ``facts_bound`` entry (:mod:`dpgov.ledger.releases`):
digests of the version's facts, privacy statement and weights, with its run, reservation,
private/reference status and author. :func:`binding_check` compares the version as the
registry holds it now with that entry, one gate line (``facts_bound``) listing every
disagreement; :func:`recall_check` fails a recalled version (``recall``).

The gate trusts what the chain says, not the artifact store: the facts file is a plain file
anyone with store access may edit, so it counts only while its digest is the bound one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpgov.gate.decision import Check
from dpgov.gate.in_force import record_in_force
from dpgov.ledger.releases import (
    DIGEST_FACTS,
    DIGEST_STATEMENT,
    DIGEST_WEIGHTS,
    Binding,
    Recall,
    binding_of,
    recalled,
)

if TYPE_CHECKING:
    from dpgov.gate.facts import CandidateFacts
    from dpgov.gate.ports import ModelVersionInfo, RegistryPort
    from dpgov.ledger import Ledger

_WHAT = {
    DIGEST_FACTS: "candidate facts",
    DIGEST_STATEMENT: "privacy statement",
    DIGEST_WEIGHTS: "model weights",
}


@dataclass(frozen=True)
class Bound:
    binding: Binding | None
    recall: Recall | None
    digests: dict[str, str | None]  # the artifact digests as the registry holds them now
    setter: str | None  # who set the policy in force (None: the packaged default)


def policy_setter(ledger: Ledger, dataset: str | None) -> str | None:
    """The identity that set the policy in force for ``dataset``; None for the packaged
    policy (in force before any ``dpgov policy set``)."""
    record = record_in_force(ledger, dataset)
    return record.set_by if record.seq > 0 and record.set_by else None


def collect(
    ledger: Ledger, registry: RegistryPort, model: str, version: str, dataset: str | None
) -> Bound:
    binding = binding_of(ledger, model, version)
    digests = registry.artifact_digests(model, version)
    if binding is not None and digests != binding.digests:
        # read once more before judging: a download that failed on a busy tracking server
        # (read as no file) must not pass for changed weights; a real change stays a change
        digests = registry.artifact_digests(model, version)
    return Bound(
        binding=binding,
        recall=recalled(ledger, model, version),
        digests=digests,
        setter=policy_setter(ledger, dataset),
    )


def problems(bound: Bound, facts: CandidateFacts, info: ModelVersionInfo) -> list[str]:
    """Every way the version disagrees with its ``facts_bound`` entry (empty: none)."""
    b = bound.binding
    if b is None:
        return ["no facts_bound entry in the ledger: the version was not registered by tracking"]
    out = []
    for key, what in _WHAT.items():
        if bound.digests.get(key) != b.digests.get(key):
            out.append(f"the {what} changed since tracking (sha256 differs from entry {b.seq})")
    if info.run_id != b.run_id or facts.run_id != b.run_id:
        out.append(f"run {info.run_id} / facts run {facts.run_id}, the ledger bound run {b.run_id}")
    if facts.reservation_id != b.reservation:
        out.append(
            f"claims reservation {facts.reservation_id}, the ledger bound {b.reservation} "
            f"to this version"
        )
    if facts.private != b.private:
        out.append(
            f"claims private={str(facts.private).lower()}, the ledger knows run {b.run_id} "
            + ("reserved budget" if b.private else "reserved no budget (the non-private reference)")
        )
    return out


def binding_check(bound: Bound, facts: CandidateFacts, info: ModelVersionInfo) -> Check:
    found = problems(bound, facts, info)
    seq = bound.binding.seq if bound.binding else None
    reason = (
        f"facts, statement and weights match the digests bound at entry {seq}"
        if not found
        else "; ".join(found)
    )
    return Check("facts_bound", seq, "bound digests", not found, reason)


def recall_check(bound: Bound) -> Check:
    r = bound.recall
    if r is None:
        return Check("recall", None, None, True, "not recalled")
    return Check(
        "recall", r.seq, None, False, f"recalled by {r.identity} at entry {r.seq}: {r.reason}"
    )
