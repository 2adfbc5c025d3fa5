"""Answers for people about patients (issue 15): ``dpgov ledger patient | attach-members |
erase-patient`` (registered on the ledger group by :mod:`dpgov.cli.ledger`) and the ``dpgov
budget --per-patient`` distribution.

Who may look a patient up (or erase one from the membership) is the policy's:
``governance.patient_lookup``, or ``governance.policy_setters`` where that is null; the acting
identity is the one the deployment authenticates (:func:`dpgov.identity.acting_identity`), never a
typed name. Every lookup is recorded in the ledger (``patient_lookup`` entries, written by
:meth:`dpgov.ledger.Ledger.patient_history`), and so is every refused one
(``patient_lookup_refused``), with the SHA-256 of the pseudonym, never the pseudonym.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any

import typer

from dpgov import names
from dpgov.cli._output import JsonOption, console, either, emit, eps_up, hidden_alias, table

PSEUDONYM_HELP = "A pseudonym (20 hex digits, as prepared data holds them)."


# --------------------------------------------------------------------------- who may ask


def _policy_in_force(ledger: Any) -> Any:
    """The ledger-wide policy in force (issue 13: ledger state, never a file the caller
    names); the packaged default before any is set."""
    from dpgov.gate.in_force import policy_in_force

    return policy_in_force(ledger)


def allowed_lookup(governance: Any) -> tuple[list[str], str]:
    """Who may look patients up, and the policy key that says so."""
    if governance.patient_lookup is not None:
        return list(governance.patient_lookup), "governance.patient_lookup"
    return list(governance.policy_setters or []), "governance.policy_setters"


def authorise(ledger: Any, *, what: str, pseudonym: str) -> str:
    """The acting identity when the policy in force lets it look patients up; else Refused
    (exit 1), the refusal recorded in the ledger."""
    from dpgov.errors import Refused
    from dpgov.identity import acting_identity

    who = acting_identity(ledger)
    governance = _policy_in_force(ledger).policy.governance
    allowed, key = allowed_lookup(governance)
    if not allowed:
        reason = (
            f"the policy in force names no identity that may {what}: set "
            "governance.patient_lookup (or governance.policy_setters) to the identities of "
            "your data protection officers"
        )
    elif who.name not in allowed:
        reason = f"identity {who.name!r} ({who.method}) may not {what}: it is not in {key}"
    else:
        return who.name
    ledger.append(
        kind="patient_lookup_refused",
        payload={
            "identity": who.name,
            "authenticated_by": who.method,
            "action": what,
            "pseudonym_sha256": hashlib.sha256(pseudonym.encode()).hexdigest(),
        },
        actor=who.name,
    )
    raise Refused(reason)


# --------------------------------------------------------------------------- dpgov ledger patient


def _plain(obj: Any) -> Any:
    """Records the ledger hands out as JSON values (dataclasses, to_dict, mechanisms)."""
    if hasattr(obj, "to_dict"):
        return _plain(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


CHARGE_KEYS = ("seq", "reservation", "dataset", "block", "run_id", "mechanism", "status")
BLOCK_KEYS = ("dataset", "block", "data_version", "split")


def history_json(history: Any) -> dict[str, Any]:
    """One patient's history in the issue's JSON shape, exactly."""
    h = _plain(history)
    return {
        "pseudonym": h["pseudonym"],
        "domain": h["domain"],
        "epsilon": float(h["epsilon"]),
        "delta": float(h["delta"]),
        "composition": h["composition"],
        "charges": [{k: c.get(k) for k in CHARGE_KEYS} for c in h["charges"]],
        "blocks": [{k: b.get(k) for k in BLOCK_KEYS} for b in h["blocks"]],
    }


def resolve_pseudonym(ident: str | None, raw: str | None, domain: str | None) -> str:
    """The pseudonym asked about: ``ident`` when it is one, else ``raw`` hashed under the
    deployment's key in ``domain``."""
    from dpgov.data.pseudonym import PSEUDONYM_PATTERN, load_key, pseudonym
    from dpgov.errors import UsageError

    if raw is not None:
        if ident is not None:
            raise UsageError("give a pseudonym or --source-id ID, not both")
        if not domain:
            raise UsageError("--source-id needs --domain (the patient id domain of the contract)")
        return pseudonym(domain, raw, key=load_key(create=False).key)
    if ident is None:
        raise UsageError("give a pseudonym, or --source-id ID --domain D")
    if not re.match(PSEUDONYM_PATTERN, ident):
        raise UsageError(
            f"{names.quote(ident)} is not a pseudonym (20 hex digits): look a source id up with "
            "--source-id ID --domain D"
        )
    return ident


def patient(
    ident: str | None = typer.Argument(None, metavar="ID", help=PSEUDONYM_HELP),
    raw: str | None = typer.Option(
        None,
        "--source-id",
        help="A source patient id, hashed with the deployment's key (with --domain).",
    ),
    domain: str | None = typer.Option(
        None, "--domain", help="The patient id domain (the contract's patient_id_domain)."
    ),
    as_json: bool = JsonOption,
    raw_old: str | None = hidden_alias("--source-id", "--raw"),
) -> None:
    """One patient's whole privacy history: blocks, charges, runs, composed ε. Exit 2 when the
    patient is in no block. Only identities the policy names may ask; every lookup is recorded."""
    from dpgov.data.pseudonym import load_key
    from dpgov.errors import UsageError
    from dpgov.ledger import Ledger

    raw = either(raw, raw_old, name="--source-id", old="--raw")

    if domain is not None:
        names.name(domain, argument="--domain")
    pseudo = resolve_pseudonym(ident, raw, domain)
    ledger = Ledger.open()
    try:
        if raw is not None:  # a source id hashed with another key would silently find nothing
            ledger.pseudonym_key(load_key(create=False).fingerprint)
        who = authorise(ledger, what="look patients up", pseudonym=pseudo)
        budget = _policy_in_force(ledger).policy.budget
        found = ledger.patient_history(pseudo, domain=domain, actor=who, budget=budget)
    finally:
        ledger.close()
    if found is None:
        where = f" of domain {domain!r}" if domain else ""
        raise UsageError(f"patient {pseudo}{where} is in no block of the ledger")
    data = history_json(found)
    emit(as_json, data, lambda: _render_history(data))


def _render_history(h: dict[str, Any]) -> None:
    console().print(
        f"patient {h['pseudonym']} (domain {h['domain']}): ε = {eps_up(h['epsilon'])} at "
        f"δ = {h['delta']:g} ({h['composition']} composition), {len(h['charges'])} charges, "
        f"{len(h['blocks'])} blocks",
        markup=False,
        highlight=False,
    )
    blocks = table(title="Blocks holding this patient")
    for col in BLOCK_KEYS:
        blocks.add_column(col, no_wrap=col in ("dataset", "block"), overflow="fold")
    for b in h["blocks"]:
        blocks.add_row(*(str(b[k] or "—") for k in BLOCK_KEYS))
    console().print(blocks)
    charges = table(
        title="Charges that reached this patient",
        caption="res.: the reservation id's start (every command accepts it); q: sample rate; "
        "T: steps",
    )
    charges.add_column("seq", justify="right")
    charges.add_column("res.", no_wrap=True)
    charges.add_column("dataset/block", no_wrap=True)
    charges.add_column("run", overflow="fold")
    for col in ("σ", "q", "T"):
        charges.add_column(col, justify="right", no_wrap=True)
    charges.add_column("status", overflow="fold")
    for c in h["charges"]:
        m = c["mechanism"] or {}
        charges.add_row(
            str(c["seq"]),
            str(c["reservation"])[:8],
            f"{c['dataset']}/{c['block']}",
            str(c["run_id"] or "—"),
            f"{m.get('noise_multiplier', float('nan')):.4g}",
            f"{m.get('sample_rate', float('nan')):.4g}",
            str(m.get("steps", "—")),
            str(c["status"]),
        )
    console().print(charges)


# --------------------------------------------------------------------------- membership


def attach_members(
    dataset: str = typer.Option(..., "--dataset"),
    block: str = typer.Option(..., "--block"),
    data: Path | None = typer.Option(
        None, "--prepared", help="Prepared folder (default data/prepared/<dataset>)."
    ),
    as_json: bool = JsonOption,
    data_old: Path | None = hidden_alias("--prepared", "--data"),
) -> None:
    """Attach the members of a block registered without them, from prepared data of the same
    data version (until then its charges reach every patient of its domain)."""
    data = either(data, data_old, name="--prepared", old="--data")
    names.options(dataset=dataset, block=block)
    from dpgov.data.preparation import block_members, default_output
    from dpgov.data.prepared_data import load_prepared
    from dpgov.errors import UsageError
    from dpgov.ledger import Ledger

    folder = data or default_output(dataset)
    prepared = load_prepared(folder)
    if prepared.dataset != dataset:
        raise UsageError(
            f"prepared data {folder} is of dataset {prepared.dataset!r}, not {dataset!r}"
        )
    members = block_members(prepared.train).get(block)
    if members is None:
        raise UsageError(
            f"block {block!r} has no training rows in {folder} (blocks: "
            f"{', '.join(prepared.meta['blocks'])}): its members are not among the prepared data"
        )
    fp = (prepared.meta.get("pseudonymisation") or {}).get("key_fingerprint")
    if not fp:
        raise UsageError(f"prepared data {folder}: meta.json names no pseudonym key: prepare again")
    ledger = Ledger.open()
    try:
        ledger.pseudonym_key(fp)
        entry = ledger.attach_members(
            dataset=dataset, block=block, members=members, data_version=prepared.data_version
        )
    finally:
        ledger.close()
    out = {
        "dataset": dataset,
        "block": block,
        "members": len(members),
        "data_version": prepared.data_version,
        "seq": entry.seq,
    }
    emit(
        as_json,
        out,
        lambda: typer.echo(
            f"block {dataset}/{block}: {len(members)} members attached from {folder} "
            f"(entry {entry.seq})"
        ),
    )


def erase_patient(
    ident: str = typer.Argument(..., metavar="ID", help=PSEUDONYM_HELP),
    domain: str = typer.Option(..., "--domain", help="The patient id domain."),
    reason: str = typer.Option(..., "--reason", help="Why (e.g. the erasure request's reference)."),
    as_json: bool = JsonOption,
) -> None:
    """Erase one pseudonym from every block's membership of its domain (an erasure entry; the
    charges stay). Only identities the policy names may erase."""
    from dpgov.ledger import Ledger

    names.name(domain, argument="--domain")
    names.name(reason, argument="--reason", max_length=1000)
    pseudo = resolve_pseudonym(ident, None, domain)
    ledger = Ledger.open()
    try:
        who = authorise(ledger, what="erase patients", pseudonym=pseudo)
        entry = ledger.erase_member(domain=domain, pseudonym=pseudo, reason=reason, actor=who)
    finally:
        ledger.close()
    blocks = _plain(entry.payload).get("blocks") or []
    out = {"pseudonym": pseudo, "domain": domain, "seq": entry.seq, "blocks": blocks}
    emit(
        as_json,
        out,
        lambda: typer.echo(
            f"patient {pseudo} erased from the membership of {len(blocks)} block(s) of "
            f"domain {domain} (entry {entry.seq}); the charges stay on the ledger"
        ),
    )


# --------------------------------------------------------------------------- budget --per-patient


def _quantile(sorted_eps: list[tuple[float, int]], position: int) -> float:
    """The ε of the patient at ``position`` (0-based) in ε order, from (ε, count) pairs."""
    seen = 0
    for eps, count in sorted_eps:
        seen += count
        if position < seen:
            return eps
    return sorted_eps[-1][0]


def distribution(classes: list[Any], *, limit: float) -> list[dict[str, Any]]:
    """Per domain: patients, history classes, min / median / max per-patient ε, and how many
    patients are over ``limit``. ``classes`` are :class:`PatientClass` records (domain, count,
    reservations, epsilon)."""
    from dpgov.contracts import exceeds

    by_domain: dict[str, list[Any]] = {}
    for c in classes:
        by_domain.setdefault(c.domain, []).append(c)
    out = []
    for domain, items in sorted(by_domain.items()):
        pairs = sorted((float(c.epsilon), int(c.count)) for c in items)
        n = sum(count for _, count in pairs)
        if n == 0:
            continue
        lo, hi = _quantile(pairs, (n - 1) // 2), _quantile(pairs, n // 2)
        out.append(
            {
                "domain": domain,
                "patients": n,
                "classes": len(items),
                "epsilon_min": pairs[0][0],
                "epsilon_median": (lo + hi) / 2,
                "epsilon_max": pairs[-1][0],
                "patients_over_limit": sum(c for e, c in pairs if exceeds(e, limit)),
                "history_classes": [
                    {
                        "patients": int(c.count),
                        "charges": len(c.reservations),
                        "reservations": sorted(c.reservations),
                        "epsilon": float(c.epsilon),
                    }
                    for c in sorted(items, key=lambda c: (-float(c.epsilon), -int(c.count)))
                ],
            }
        )
    return out


def render_distribution(domains: list[dict[str, Any]], *, limit: float, title: str) -> None:
    if not domains:
        typer.echo("no patients registered yet (blocks registered with their members)")
        return
    t = table(title=title)
    t.add_column("domain", no_wrap=True)
    for col in ("patients", "classes"):
        t.add_column(col, justify="right")
    for col in ("ε min", "ε median", "ε max"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("over limit", justify="right")
    for d in domains:
        t.add_row(
            d["domain"],
            str(d["patients"]),
            str(d["classes"]),
            eps_up(d["epsilon_min"]),
            eps_up(d["epsilon_median"]),
            eps_up(d["epsilon_max"]),
            str(d["patients_over_limit"]),
        )
    console().print(t)
    classes = table(title=f"History classes (patients with the same charges; limit ε {limit:g})")
    classes.add_column("domain", no_wrap=True)
    for col in ("patients", "charges"):
        classes.add_column(col, justify="right")
    classes.add_column("ε", justify="right", no_wrap=True)
    for d in domains:
        for c in d["history_classes"]:
            classes.add_row(
                d["domain"], str(c["patients"]), str(c["charges"]), eps_up(c["epsilon"])
            )
    console().print(classes)


def budget_patients(ledger: Any, loaded: Any, *, dataset: str | None, as_json: bool) -> None:
    """``dpgov budget --per-patient``: the distribution of per-patient ε, from the ledger's
    history classes (every figure composed from the verified entries)."""
    b = loaded.policy.budget
    classes = ledger.patient_classes(b, dataset=dataset)
    domains = distribution(classes, limit=b.epsilon_per_block)
    data = {
        "domains": domains,
        "dataset": dataset,
        "epsilon_limit": b.epsilon_per_block,
        "delta": b.delta,
        "accountant": b.accountant,
        "policy": str(loaded.path),
        "policy_sha256": loaded.sha256,
        "source": "entries",
    }
    title = f"Privacy loss per patient (ε at δ={b.delta:g}, {b.accountant})"
    emit(
        as_json,
        data,
        lambda: render_distribution(domains, limit=b.epsilon_per_block, title=title),
    )
