"""``dpgov ledger show | verify | plan | reserve | commit | release | abort | add-block | retire``
(and ``patient | attach-members | erase-patient`` from :mod:`dpgov.cli.patients`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dpgov import names
from dpgov.cli._output import (
    JsonOption,
    NoPolicyOption,
    console,
    emit,
    eps_up,
    prose,
    resolve_prefix,
    table,
)
from dpgov.cli.patients import attach_members, erase_patient, patient

ledger_app = typer.Typer(help="Read, verify and charge the privacy ledger.", no_args_is_help=True)
# one patient's history, membership and erasure (issue 15): dpgov.cli.patients
ledger_app.command("patient")(patient)
ledger_app.command("attach-members")(attach_members)
ledger_app.command("erase-patient")(erase_patient)


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")


def _open() -> Any:
    from dpgov.ledger import Ledger

    return Ledger.open()


def reservation_id(ledger: Any, given: str) -> str:
    """The full reservation id of ``given`` (the id, or its start as `dpgov ledger show`
    prints it); unknown or ambiguous: one line, exit 2."""
    ids = [r.id for r in ledger.reservations()]
    return resolve_prefix(given, ids, what="reservation", option="RESERVATION")


ReservationArg = typer.Argument(
    ..., help="Reservation id, or its start (as `dpgov ledger show` prints it)."
)


def _blocks(p: dict[str, Any]) -> str:
    blocks = p.get("blocks") or ([p["block"]] if p.get("block") else [])
    return f"{p.get('dataset', '?')}/{', '.join(str(b) for b in blocks)}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(_short(v) for v in value)
    if isinstance(value, dict):
        return "{…}"
    text = str(value)
    return text[:8] if _looks_like_id(text) else text


def _looks_like_id(text: str) -> bool:
    """A reservation or schedule id (a UUID) or a hash: printed by its start."""
    return len(text) >= 32 and all(c in "0123456789abcdef-" for c in text)


# the payload keys a generic summary names, in this order (an entry of any other kind)
SUMMARY_KEYS = (
    "model", "version", "alias", "dataset", "block", "blocks", "reservation", "schedule",
    "allowed", "action", "status", "by", "identity", "run_id", "reason", "note",
)  # fmt: skip
SUMMARY_WIDTH = 100  # characters of a generic summary (--json keeps everything)


def _summary(kind: str, payload: dict[str, Any]) -> str:
    """One line per entry, for people; `dpgov ledger show --json` keeps every field."""
    p = payload
    try:
        if kind == "block_added":
            return f"{p['dataset']}/{p['block']}: {p['patients']} patients"
        if kind == "reservation":
            m = p["mechanism"]
            return (
                f"{p['reservation'][:8]} {_blocks(p)} σ={m['noise_multiplier']:.4g} "
                f"q={m['sample_rate']:.4g} T={m['steps']} ε_run={eps_up(p['epsilon_run'])}"
            )
        if kind == "commit":
            return f"{p['reservation'][:8]} steps={p['steps']}"
        if kind == "schedule_committed":
            return (
                f"{p['schedule'][:8]} {_blocks(p)}: "
                f"{len(p['runs'])} planned runs {p.get('purpose') or ''}".rstrip()
            )
        if kind in ("release", "abort"):
            return f"{p['reservation'][:8]} {p.get('reason', '')}".rstrip()
        if kind == "gate_decision":
            failing = [c["name"] for c in p.get("checks", []) if not c.get("passed")]
            verdict = "ALLOWED" if p.get("allowed") else "BLOCKED by " + ", ".join(failing)
            return f"{p['model']} v{p['version']} {verdict} ({p.get('purpose') or 'gate'})"
        if kind in ("approval", "refusal"):
            text = p.get("note") or p.get("reason") or ""
            return f"{p['model']} v{p['version']} by {p.get('by')}: {text}".rstrip(": ")
        if kind == "promotion":
            was = f" (was v{p['replaced']})" if p.get("replaced") else ""
            return f"{p['model']} v{p['version']} @{p['alias']}{was}"
        if kind == "policy_set":
            scope = p.get("dataset") or "ledger"
            sha = str((p.get("policy") or {}).get("sha256", ""))[:12]
            return f"{p.get('action', 'set')} {scope} policy {sha}: {p.get('reason', '')}"
    except (KeyError, TypeError, IndexError):  # an entry of an older shape: the generic line
        pass
    parts = [f"{k}={_short(p[k])}" for k in SUMMARY_KEYS if p.get(k) not in (None, "", [])]
    if not parts:  # none of the usual keys: the entry's first plain fields
        plain = [(k, v) for k, v in p.items() if isinstance(v, str | int | float | bool)]
        parts = [f"{k}={_short(v)}" for k, v in plain[:4]] or [", ".join(sorted(p))]
    text = " ".join(parts)
    return text if len(text) <= SUMMARY_WIDTH else text[: SUMMARY_WIDTH - 1] + "…"


@ledger_app.command("show")
def show(
    kind: str | None = typer.Option(None, "--kind", help="Only entries of this kind."),
    last: int = typer.Option(0, "--last", min=0, help="Only the newest N entries (0: all)."),
    as_json: bool = JsonOption,
) -> None:
    """List ledger entries, oldest first: one line each (ids by their start, which every
    command accepts); --json prints every field, hashes included."""
    entries = _open().entries(kind)
    if last:
        entries = entries[-last:]

    def render() -> None:
        t = table(
            title="Privacy ledger",
            caption="ids are shown by their first 8 characters; --json for every field",
        )
        t.add_column("seq", justify="right", no_wrap=True)
        t.add_column("time (UTC)", no_wrap=True)
        t.add_column("kind", no_wrap=True)
        t.add_column("by", overflow="fold")
        t.add_column("what", overflow="fold", ratio=1)
        for e in entries:
            t.add_row(
                str(e.seq),
                e.time[:16].replace("T", " "),
                e.kind,
                e.actor,
                _summary(e.kind, e.payload),
            )
        console().print(t)

    emit(as_json, {"entries": [e.to_dict() for e in entries]}, render)


@ledger_app.command("verify")
def verify(
    policy: Path | None = NoPolicyOption,
    tracking: bool = typer.Option(
        True, "--tracking/--no-tracking", help="Also check the anchors in the tracking store."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Check the hash chain, the signatures, and the tail against every anchor; exit 1
    naming the first bad entry, a cut tail, or signatures the policy requires."""
    from dpgov.cli._ledger_checks import beyond_the_chain
    from dpgov.ledger.integrity import combine

    ledger = _open()
    chain, tables = ledger.verify_all()  # the chain, and the tables against its entries
    result = combine(chain, tables)
    beyond = beyond_the_chain(ledger, chain, tracking=tracking)
    ok = result.ok and not beyond.failures

    def render() -> None:
        if result.ok:
            word = "verified" if ok else "chain intact"
            typer.echo(f"ledger {word}: {result.entries} entries, head {result.head[:16]}")
        elif chain.ok:
            typer.echo(f"ledger verification FAILED: {tables.reason}", err=True)
        else:
            typer.echo(
                f"ledger verification FAILED at entry {result.first_bad_seq}: {result.reason}",
                err=True,
            )
        prose(tables.summary())  # wrapped at 80 columns when piped
        prose(result.signature_note())
        for r in result.restores:
            prose(
                f"restored at entry {r.seq} ({r.time[:19]}, by {r.actor}) from a backup whose "
                f"head is entry {r.backup_seq}: entries {r.backup_seq + 1}..{r.lost_through} lost"
            )
        sources = ", ".join(f"{n} in the {k}" for k, n in beyond.sources.items())
        prose(f"anchors: {beyond.anchors} checked ({sources or 'none configured'})")
        for note in beyond.notes:
            prose(f"note: {note}")
        for failure in beyond.failures:
            typer.echo(f"ledger verification FAILED: {failure}", err=True)

    data = {**result.to_dict(), "ok": ok, "chain_ok": chain.ok, "tables": tables.to_dict()}
    data.update(anchors=beyond.to_dict(), failures=beyond.failures)
    emit(as_json, data, render)
    if not ok:
        raise typer.Exit(1)


@ledger_app.command("repair")
def repair(policy: Path | None = NoPolicyOption, as_json: bool = JsonOption) -> None:
    """Rebuild the ledger's tables from its entries where they disagree, and seal fresh
    compositions (the accountant of the policy in force); one chained entry records what was
    found."""
    from dpgov.gate.in_force import policy_in_force

    ledger = _open()
    accountant = policy_in_force(ledger).policy.budget.accountant
    entry = ledger.repair(accountant=accountant)
    found = entry.payload.get("disagreements_total", 0) if entry else 0
    sealed = len(entry.payload.get("composition", [])) if entry else 0
    emit(
        as_json,
        {"seq": entry.seq if entry else None, "disagreements": found, "sealed": sealed},
        lambda: typer.echo(
            f"ledger repaired (entry {entry.seq}): {found} table rows rebuilt or dropped, "
            f"{sealed} compositions sealed"
            if entry
            else "nothing to repair: the tables agree with the entries, every cache is sealed"
        ),
    )


@ledger_app.command("add-block")
def add_block(
    dataset: str = typer.Option(..., "--dataset"),
    block: str = typer.Option(..., "--block"),
    patients: int = typer.Option(..., "--patients", help="Number of patients in the block."),
    data_version: str | None = typer.Option(None, "--data-version"),
    as_json: bool = JsonOption,
) -> None:
    """Register a block of patients (for training jobs run outside dpgov)."""
    names.options(dataset=dataset, block=block, patients=patients, data_version=data_version)
    entry = _open().add_block(
        dataset=dataset, block=block, patients=patients, data_version=data_version
    )
    data = {
        "dataset": dataset,
        "block": block,
        "patients": patients,
        "seq": entry.seq if entry else None,
        "created": entry is not None,
    }
    emit(
        as_json,
        data,
        lambda: typer.echo(
            f"block {dataset}/{block} registered ({patients} patients, entry {entry.seq})"
            if entry
            else f"block {dataset}/{block} already registered with {patients} patients"
        ),
    )


@ledger_app.command("retire")
def retire(
    dataset: str = typer.Option(..., "--dataset"),
    block: str = typer.Option(..., "--block"),
    reason: str = typer.Option(..., "--reason"),
    as_json: bool = JsonOption,
) -> None:
    """Retire a block from training."""
    names.options(dataset=dataset, block=block)
    entry = _open().retire_block(dataset=dataset, block=block, reason=reason)
    emit(
        as_json,
        {"seq": entry.seq, "dataset": dataset, "block": block},
        lambda: typer.echo(f"block {dataset}/{block} retired (entry {entry.seq})"),
    )


@ledger_app.command("plan")
def plan(
    schedule_file: Path = typer.Argument(..., help="The schedule (YAML): see docs/ledger.md."),
    as_json: bool = JsonOption,
) -> None:
    """Commit a schedule of planned runs in advance (a chained entry). Under
    `budget.composition: fixed` only runs of a committed schedule may be reserved; the whole
    schedule must fit the budget of every patient it reaches, else nothing is recorded."""
    from dpgov.gate.in_force import policy_in_force
    from dpgov.ledger.schedules import parse_schedule_file

    sched = parse_schedule_file(schedule_file)
    names.options(dataset=sched.dataset, blocks=sched.blocks)
    ledger = _open()
    loaded = policy_in_force(ledger, sched.dataset)
    entry = ledger.plan_schedule(
        dataset=sched.dataset,
        blocks=sched.blocks,
        runs=sched.runs,
        budget=loaded.policy.budget,
        purpose=sched.purpose,
        source_sha256=sched.sha256,
    )
    p = entry.payload
    emit(
        as_json,
        {"seq": entry.seq, "policy_sha256": loaded.sha256, **p},
        lambda: typer.echo(
            f"schedule {p['schedule']} committed (entry {entry.seq}): {len(p['runs'])} planned "
            f"runs on {sched.dataset}/{', '.join(p['blocks'])}; composition "
            f"{loaded.policy.budget.composition}"
        ),
    )


@ledger_app.command("reserve")
def reserve(
    dataset: str = typer.Option(..., "--dataset"),
    block: list[str] = typer.Option(..., "--block", help="Block to charge (repeat)."),
    noise_multiplier: float = typer.Option(..., "--noise-multiplier"),
    sample_rate: float = typer.Option(..., "--sample-rate"),
    steps: int = typer.Option(..., "--steps"),
    run_id: str | None = typer.Option(None, "--run-id"),
    policy: Path | None = NoPolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Atomically check and charge a planned DP-SGD run to every named block, under the
    dataset's policy in force (`dpgov policy show --dataset D`). Refused (exit 1, nothing
    charged) when that policy requires δ < 1/n and δ is not below 1/(patients of the blocks)."""
    names.options(dataset=dataset, blocks=block, steps=steps, run_id=run_id)
    from dpgov.cli._reserve_checks import (
        check_delta_below_inverse_patients,
        check_not_training_on_test,
    )
    from dpgov.cli.accounting import _mechanism
    from dpgov.gate.in_force import policy_in_force

    mech = _mechanism(noise_multiplier, sample_rate, steps)
    ledger = _open()
    loaded = policy_in_force(ledger, dataset)
    check_not_training_on_test(ledger, loaded.policy, dataset, block, mech)  # before charging
    check_delta_below_inverse_patients(ledger, loaded.policy, dataset, block)
    res = ledger.reserve(
        dataset=dataset,
        blocks=block,
        mechanism=mech,
        budget=loaded.policy.budget,
        policy_sha256=loaded.sha256,
        run_id=run_id,
    )
    emit(
        as_json,
        res.to_dict(),
        lambda: typer.echo(
            f"reservation {res.id} (entry {res.seq}): ε_run={eps_up(res.epsilon_run)}; blocks now "
            + ", ".join(f"{b} ε={eps_up(e)}" for b, e in res.epsilon_after.items())
        ),
    )


@ledger_app.command("commit")
def commit(
    reservation: str = ReservationArg,
    steps: int | None = typer.Option(None, "--steps", help="Steps actually taken (default all)."),
    run_id: str | None = typer.Option(None, "--run-id"),
    as_json: bool = JsonOption,
) -> None:
    """Record the steps a reserved run actually took."""
    names.options(reservation=reservation, steps=steps, run_id=run_id)
    from dpgov.tracking.anchor import try_record_anchor

    ledger = _open()
    reservation = reservation_id(ledger, reservation)
    entry = ledger.commit(reservation, steps=steps, run_id=run_id)
    try_record_anchor(entry.seq, entry.hash, ledger=ledger)  # the audit's outside anchor
    emit(
        as_json,
        {"reservation": reservation, "seq": entry.seq, "steps": entry.payload["steps"]},
        lambda: typer.echo(
            f"committed {reservation}: {entry.payload['steps']} steps (entry {entry.seq})"
        ),
    )


@ledger_app.command("release")
def release(
    reservation: str = ReservationArg,
    reason: str = typer.Option("no step ran", "--reason"),
    as_json: bool = JsonOption,
) -> None:
    """Return a reservation's budget (only when no training step ran)."""
    names.options(reservation=reservation)
    ledger = _open()
    reservation = reservation_id(ledger, reservation)
    entry = ledger.release(reservation, reason=reason)
    emit(
        as_json,
        {"reservation": reservation, "seq": entry.seq},
        lambda: typer.echo(f"released {reservation} (entry {entry.seq})"),
    )


@ledger_app.command("abort")
def abort(
    reservation: str = ReservationArg,
    reason: str = typer.Option(..., "--reason"),
    as_json: bool = JsonOption,
) -> None:
    """Mark a crashed run: its reservation stays fully charged."""
    names.options(reservation=reservation)
    ledger = _open()
    reservation = reservation_id(ledger, reservation)
    entry = ledger.abort(reservation, reason=reason)
    emit(
        as_json,
        {"reservation": reservation, "seq": entry.seq},
        lambda: typer.echo(f"aborted {reservation}: stays charged (entry {entry.seq})"),
    )
