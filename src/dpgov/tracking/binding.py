"""Binding a registered model version's facts to the ledger, at tracking time.

:func:`bind_version` reads back what the artifact store now holds for the version (its facts,
privacy statement and model files: :meth:`dpgov.tracking.registry.Registry.artifact_digests`)
and records their digests with the run, the version, the reservation and the author (the
identity the deployment authenticates) as the ledger's ``facts_bound`` entry
(:func:`dpgov.ledger.releases.bind_facts`). The gate then trusts those files only while their
digests are the bound ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dpgov.identity import acting_identity
from dpgov.ledger.releases import bind_facts
from dpgov.tracking.registry import Registry

if TYPE_CHECKING:
    from dpgov.ledger import Entry, Ledger


def bind_version(
    ledger: Ledger,
    *,
    model: str,
    version: str,
    run_id: str,
    reservation: str | None,
    registry: Registry | None = None,
) -> Entry:
    """Record the version's ``facts_bound`` entry (``reservation`` None: the non-private
    reference)."""
    who = acting_identity(ledger)
    digests = (registry or Registry()).artifact_digests(model, version)
    return bind_facts(
        ledger,
        model=model,
        version=version,
        run_id=run_id,
        reservation=reservation,
        digests=digests,
        author=who.name,
        identity=who.to_dict(),
        actor=who.name,
    )
