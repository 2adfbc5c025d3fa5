"""Check 6 (data): every charge's data version (its own, else its blocks') must be known to
DVC: recorded in ``dvc.lock`` or a ``.dvc`` file, or present in the DVC cache or a local remote
(:class:`dpgov.report.dvc_index.DvcIndex`)."""

from __future__ import annotations

from dpgov.report.dvc_index import DvcIndex
from dpgov.report.findings import Finding, finding
from dpgov.report.replay import Charge, Replay
from dpgov.report.rows import DataVersionRow, DvcSummary


def charge_data_version(r: Replay, c: Charge) -> str | None:
    """A charge's data version: its own, else the one version all its blocks share."""
    if c.data_version is not None:
        return c.data_version
    own = {r.blocks[(c.dataset, b)].data_version for b in c.blocks if (c.dataset, b) in r.blocks}
    own.discard(None)
    return own.pop() if len(own) == 1 else None


def check_data_versions(r: Replay, dvc: DvcIndex) -> tuple[list[Finding], DvcSummary]:
    """Every charge's data version (its own, else its blocks') must be known to DVC."""
    out: list[Finding] = []
    users: dict[str, list[Charge]] = {}
    for c in r.charges.values():
        version = charge_data_version(r, c)
        if version is None:
            out.append(
                finding(
                    "data_version_missing",
                    f"reservation {c.id} (entry {c.seq}, "
                    f"{c.dataset}/{','.join(c.blocks)}) records no data version: nobody can tell "
                    "which data it was charged for",
                    reservation=c.id,
                    seq=c.seq,
                    time=c.time,
                )
            )
            continue
        users.setdefault(version, []).append(c)
    found = {}
    for version, charges in sorted(users.items()):
        where = dvc.locate(version)
        found[version] = where
        if where is None:
            first = charges[0]
            out.append(
                finding(
                    "data_version_unknown",
                    f"data version {version} of {len(charges)} "
                    f"reservation(s) (first {first.id}, entry {first.seq}) is not in DVC "
                    f"(searched: {dvc.searched})",
                    data_version=version,
                    reservation=first.id,
                    seq=first.seq,
                    time=charges[-1].time,
                )
            )
    summary = DvcSummary(
        root=str(dvc.root) if dvc.root else None,
        searched=dvc.searched,
        versions=[
            DataVersionRow(data_version=v, found_in=w, reservations=len(users[v]))
            for v, w in found.items()
        ],
    )
    return out, summary
