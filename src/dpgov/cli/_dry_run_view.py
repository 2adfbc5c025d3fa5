"""What ``dpgov run --dry-run`` prints: the checks that passed, the mechanism and each block's
price, at 80 columns."""

from __future__ import annotations

from typing import Any

from dpgov.cli._output import console, eps_down, eps_up, table


def render_dry_run(data: dict[str, Any]) -> None:
    out = console()
    val = data["validation"]
    how = "recorded validation reused" if val.get("reused") else "validated now"
    model = data["model"]
    m = data["mechanism"]
    out.print(f"dry run of {data['dataset']}: nothing charged, nothing reserved")
    out.print(f"data version {data['data_version']}")
    out.print(f"data: {val['checks']} checks of the data contract hold ({how})")
    out.print(f"model: {model['name']}, {model['trainable']:,} trainable parameters")
    out.print(
        f"  forward {model['forward_batch']} → {model['output_shape']}; Opacus can make it private"
    )
    out.print(f"mechanism: {m['kind']}")
    out.print(
        f"  unit of privacy: {m['unit_of_privacy']}, at most {m['max_records_per_patient']} "
        "record(s) each" + ("; patients sampled" if m.get("patient_level") else "")
    )
    out.print(
        f"  σ = {m['noise_multiplier']:.4g}{' (calibrated)' if m['calibrated'] else ''}, "
        f"q = {m['sample_rate']:.4g}, T = {m['steps']}, C = {m['max_grad_norm']:g}"
    )
    out.print(f"  ε = {eps_up(m['epsilon_run'])} at δ = {m['delta']:g} ({m['accountant']})")
    t = table("cost per block")
    t.add_column("block", no_wrap=True)
    t.add_column("patients", justify="right")
    t.add_column("ε spent", justify="right", no_wrap=True)
    t.add_column("this run", justify="right", no_wrap=True)
    t.add_column("limit", justify="right", no_wrap=True)
    t.add_column("left now", justify="right", no_wrap=True)
    for b in data["blocks"]:
        left = max(0.0, b["epsilon_limit"] - b["epsilon_spent"])
        t.add_row(
            b["block"] + ("" if b["registered"] else " (new)"),
            str(b["patients"]),
            eps_up(b["epsilon_spent"]),
            eps_up(b["epsilon_run"]),
            f"{b['epsilon_limit']:g}",
            eps_down(left),
        )
    out.print(t)
    out.print("this run's ε is charged to every patient of each block")
