"""``dpgov audit``: verify the ledger and everything that depends on it; report.

Exit codes: 0 clean; 1 findings (each listed); 2 unusable input (a ledger that does not answer
or does not exist, a malformed policy, a bad --since, an unwritable --html path): one line.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dpgov.cli._output import JsonOption, NoPolicyOption, console, emit, eps_up, table
from dpgov.redaction import redact

if TYPE_CHECKING:
    from dpgov.ledger import Ledger
    from dpgov.report.rows import AuditReport

# findings that suggest the chain was tampered with: --anchor does not seal such a head
BLOCKS_ANCHORING = frozenset(
    {"chain_broken", "anchor_mismatch", "ledger_truncated", "row_corrupted", "tracking_unavailable"}
)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)


def parse_since(text: str | None) -> datetime | None:
    """``--since``: an ISO 8601 date or time; naive times are UTC."""
    from dpgov.errors import UsageError

    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as err:
        raise UsageError(
            f"--since {text!r}: expected a date such as 2026-01-31 or 2026-01-31T12:00:00+00:00"
        ) from err
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _check_output(path: Path) -> Path:
    from dpgov.errors import UsageError

    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--html {path}: folder {parent} does not exist; nothing written")
    if path.exists() and path.is_dir():
        raise UsageError(f"--html {path} is a folder; give a file name")
    return path


def audit(
    html_file: Path | None = typer.Option(
        None,
        "--html",
        help="Also write the report as one self-contained HTML file.",
        show_default=False,
    ),
    as_json: bool = JsonOption,
    since: str | None = typer.Option(
        None,
        "--since",
        help="Report only what happened since DATE (ISO 8601). Integrity "
        "findings are always reported.",
        show_default=False,
    ),
    policy: Path | None = NoPolicyOption,
    dvc_root: Path | None = typer.Option(
        None,
        "--dvc-root",
        help="DVC repository to look data versions up in (default: the "
        "one holding the working directory).",
        show_default=False,
    ),
    stale_hours: float = typer.Option(
        24.0,
        "--stale-hours",
        min=0.0,
        help="A reservation pending longer than this is a finding (a crashed run).",
    ),
    deep: bool = typer.Option(
        False, "--deep", help="Also recompute the ε every reservation recorded (slower)."
    ),
    anchor: bool = typer.Option(
        False,
        "--anchor",
        help="When the chain and its anchors check out, record the "
        "ledger's head as a new anchor in the tracking store.",
    ),
) -> None:
    """Verify the ledger, recompute every block's ε, check releases, runs and data versions,
    under the policy in force (and every entry under the policy in force when it was made)."""
    from dpgov.errors import Refused
    from dpgov.gate.in_force import policy_in_force
    from dpgov.policy import load_policy
    from dpgov.report.audit import AuditOptions, audit_ledger
    from dpgov.report.ledger_snapshot import open_ledger

    when = parse_since(since)
    if html_file is not None:
        _check_output(html_file)
    ledger = open_ledger()
    try:
        try:
            loaded = policy_in_force(ledger)
        except Refused:  # entries that cannot be trusted: the audit reports them
            loaded = load_policy(None)
        report = audit_ledger(
            ledger,
            loaded,
            AuditOptions(now=datetime.now(UTC), since=when, stale_hours=stale_hours, deep=deep),
            dvc_root=dvc_root,
        )
        anchored = _anchor(ledger, report) if anchor else None
    finally:
        ledger.close()
    data = report.to_dict()
    if anchored is not None:
        data["anchored"] = anchored
    if html_file is not None:
        from dpgov.report.html import render

        html_file.write_text(render(report), encoding="utf-8")
        data["html"] = str(html_file)
    emit(as_json, data, lambda: _render(report, anchored, str(html_file) if html_file else None))
    if not report.ok:
        raise typer.Exit(1)


def _anchor(ledger: Ledger, report: AuditReport) -> dict[str, Any]:
    """Anchor the head only when nothing suggests the chain was tampered with."""
    from dpgov.tracking.anchor import AnchorError, record_head

    bad = sorted({f.kind for f in report.findings if f.kind in BLOCKS_ANCHORING})
    if bad:
        return {"recorded": False, "reason": f"not anchored: {', '.join(bad)}"}
    try:
        a = record_head(ledger)
    except AnchorError as err:
        return {"recorded": False, "reason": str(err)}
    if a is None:
        return {"recorded": False, "reason": "the ledger is empty"}
    return {"recorded": True, **a.to_dict()}


def _render(report: AuditReport, anchored: dict[str, Any] | None, html: str | None) -> None:
    con = console()
    led, anc = report.ledger, report.anchors
    n = len(report.findings)
    verdict = "[bold green]CLEAN[/]" if report.ok else f"[bold red]{n} FINDING(S)[/]"
    con.print(f"audit: {verdict}" + (f" (since {report.since})" if report.since else ""))
    chain = "verifies" if led.chain_ok else f"BROKEN at entry {led.first_bad_seq}"
    con.print(
        f"ledger {led.url}: {led.entries} entries, head {led.head_seq}, "
        f"chain {chain}; HMAC key {'set' if led.hmac_key_set else 'not set'}"
    )
    if anc.checked:
        con.print(f"anchors: {anc.count} ({anc.matched} matching), newest entry {anc.newest_seq}")
    else:
        con.print("anchors: not checked")
    c = report.counts
    states = ", ".join(f"{n} {status}" for status, n in sorted(c.by_status.items()))
    con.print(
        f"reservations {c.reservations}" + (f" ({states})" if states else "") + f"; MLflow "
        f"runs {c.mlflow_runs} ({c.dp_runs} DP); releases {c.releases}"
    )
    for x in report.reference_releases:  # releases that depended on a non-private model
        con.print(
            redact(f"non-private reference: {x.model} v{x.version} @{x.alias}: {x.sentence()}"),
            markup=False,
        )
    for e in report.evaluated_releases:  # issue 17: DP-evaluated test metrics and their cost
        con.print(
            redact(f"DP-evaluated: {e.model} v{e.version} @{e.alias}: {e.sentence()}"),
            markup=False,
        )
    if report.blocks:
        t = table(
            title="ε per block (recomputed from the entries)",
            caption="ε: recomputed; ledger: ε as the ledger reports it; chg: charges; "
            "pend: pending",
        )
        for col in ("dataset", "block"):
            t.add_column(col, no_wrap=True)
        for col in ("ε", "ledger", "limit"):
            t.add_column(col, justify="right", no_wrap=True)
        for col in ("chg", "pend"):
            t.add_column(col, justify="right")
        for b in report.blocks:
            t.add_row(
                b.dataset,
                b.block,
                "—" if b.epsilon is None else eps_up(b.epsilon),
                "—" if b.epsilon_ledger is None else eps_up(b.epsilon_ledger),
                f"{b.epsilon_limit:g}",
                str(b.charges),
                str(b.pending),
            )
        con.print(t)
    if report.findings:
        t = table(title="Findings")
        t.add_column("kind", no_wrap=True)
        t.add_column("detail", ratio=1)
        for f in report.findings:
            t.add_row(f.kind, redact(f.detail))  # a driver's error may quote a URL
        con.print(t)
    if anchored:
        con.print(
            f"anchored head entry {anchored['seq']}"
            if anchored["recorded"]
            else redact(str(anchored["reason"]))
        )
    if html:
        con.print(f"report written to {html}")
