"""Putting a policy in force on a test's ledger, as `dpgov policy set` does.

Commands that charge, record or release take no ``--policy``: they enforce the policy in force
on the ledger. A test that needs another policy sets it on its ledger first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dpgov import yamlio
from dpgov.ledger import Ledger
from dpgov.ledger.policies import SET, set_policy
from dpgov.policy import LoadedPolicy, load_policy


def put_in_force(
    policy: str | Path,
    *,
    dataset: str | None = None,
    ledger: Ledger | None = None,
    url: str | None = None,
    actor: str = "tester",
    reason: str = "test",
) -> LoadedPolicy:
    """Record the policy file ``policy`` as the policy in force (of ``dataset``, else the whole
    ledger) on ``ledger`` (else the ledger at ``url``, else the configured one); the policy as
    the ledger now holds it. Fails when the change would need approvals first."""
    own = ledger is None
    led = ledger if ledger is not None else Ledger.open(url)
    try:
        loaded = load_policy(policy)
        entry, action = set_policy(led, loaded, dataset=dataset, reason=reason, actor=actor)
        if action != SET:
            raise AssertionError(f"policy change at entry {entry.seq} needs approvals first")
        return loaded
    finally:
        if own:
            led.close()


def write_policy(path: Path, **sections: dict[str, Any]) -> Path:
    """A policy file: the packaged policy with ``sections`` merged in (``budget={...}``)."""
    base = yamlio.parse_mapping(load_policy(None).text, where="the packaged policy")
    for name, values in sections.items():
        base[name] = {**(base.get(name) or {}), **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    return path


__all__ = ["put_in_force", "write_policy"]
