"""The audit report as one self-contained HTML file.

No network and no script: CSS is inline, plots are PNG images embedded as ``data:`` URIs (drawn
with matplotlib's Agg backend), and a Content-Security-Policy forbids the page from loading
anything else. The file can be mailed, archived and opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from dpgov.contracts import show_remaining, show_spent
from dpgov.redaction import redact
from dpgov.report.rows import AuditReport, BlockRow, ReleaseRow, ReleaseStatement, RunRow
from dpgov.report.times import parse_time

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_ROWS = 500  # rows of one table shown; the JSON has them all

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:2px solid
#dde1e7;padding-bottom:4px}h3{font-size:16px;margin:20px 0 6px}
.verdict{display:inline-block;padding:4px 12px;border-radius:4px;font-weight:700;color:#fff}
.ok{background:#1c7c3c}.bad{background:#b3261e}
.meta{color:#4b5563;font-size:13px}
table{border-collapse:collapse;width:100%;background:#fff;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #dde1e7;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.finding td:first-child{font-weight:600;color:#b3261e;white-space:nowrap}
.card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 16px;margin:12px 0}
figure{margin:8px 0;background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#4b5563;font-size:12px;margin-top:4px}
pre{white-space:pre-wrap;background:#f0f2f5;padding:8px;border-radius:4px;font-size:12.5px}
code{font-size:12.5px}.muted{color:#6b7280}.warn{color:#b3261e;font-weight:600}
"""


def esc(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else ("—" if math.isnan(value) else f"{value:.4g}")
    return html.escape(str(value))


def eps_cell(value: float | None) -> str:
    """Spent ε rounded up (never understate a spend)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    if math.isinf(value):
        return "∞"
    return show_spent(value)


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    cls: str = "",
    numeric: Sequence[int] = (),
) -> str:
    rows = list(rows)
    shown = rows[:MAX_ROWS]
    out = ["<table><thead><tr>", *[f"<th>{esc(h)}</th>" for h in headers], "</tr></thead><tbody>"]
    for row in shown:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        out.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    if len(rows) > len(shown):
        out.append(
            f'<p class="muted">{len(rows) - len(shown)} more rows in the JSON '
            "report (dpgov audit --json).</p>"
        )
    return "".join(out)


# ------------------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(png: str | None, alt: str, caption: str) -> str:
    if png is None:
        return f'<p class="muted">{esc(alt)}: nothing to plot.</p>'
    return (
        f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _setup() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _dates(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def burn_down_png(blocks: Sequence[BlockRow], limit: float) -> str | None:
    series = [
        (
            b,
            [
                (t, p.epsilon)
                for p in b.burn_down
                if (t := parse_time(p.time)) is not None and p.epsilon is not None
            ],
        )
        for b in blocks
    ]
    series = [(b, pts) for b, pts in series if pts]
    if not series:
        return None
    plt = _setup()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for b, pts in series:
        xs, ys = zip(*pts, strict=True)
        ax.step(
            xs,
            ys,
            where="post",
            marker="o",
            markersize=2.5,
            linewidth=1.2,
            label=f"{b.dataset}/{b.block}",
        )
    ax.axhline(limit, color="#b3261e", linestyle="--", linewidth=1.2, label=f"limit {limit:g}")
    ax.set_ylabel("ε spent by the block")
    ax.set_title("Budget burn-down per block")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    handles = len(series) + 1
    if handles <= 24:
        ax.legend(
            fontsize=7,
            ncol=max(1, math.ceil(handles / 12)),
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    _dates(ax)
    return _png(fig)


def runs_png(runs: Sequence[RunRow]) -> str | None:
    pts = [
        (t, r.epsilon, r.status)
        for r in runs
        if r.epsilon is not None and (t := parse_time(r.time)) is not None
    ]
    if not pts:
        return None
    plt = _setup()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    colours = {
        "committed": "#1f6feb",
        "pending": "#d29922",
        "aborted": "#b3261e",
        "released": "#8b949e",
    }
    for status, colour in colours.items():
        sel = [(t, e) for t, e, s in pts if s == status]
        if not sel:
            continue
        xs, ys = zip(*sel, strict=True)
        if len(pts) <= 200:  # a stem per run while they can be told apart
            ax.vlines(xs, 0, ys, color=colour, linewidth=1.0, alpha=0.7)
        ax.scatter(xs, ys, s=14, color=colour, label=status, zorder=3)
    ax.set_ylabel("ε of the run alone")
    ax.set_title("ε per run (each reservation, at its own δ)")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    _dates(ax)
    return _png(fig)


def subgroups_png(release: ReleaseRow) -> str | None:
    subgroups = release.statement.subgroups if release.statement else []
    groups = [g for g in subgroups or [] if isinstance(g, dict)]
    if not groups:
        return None
    plt = _setup()
    labels = [f"{g.get('attribute')}={g.get('group')} (n={g.get('n')})" for g in groups]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.9 + 0.32 * len(groups)), sharey=True)
    for ax, metric, colour in ((axes[0], "auroc", "#1f6feb"), (axes[1], "fnr", "#d29922")):
        ys = list(range(len(groups)))
        vals = [g.get(metric) for g in groups]
        xs = [v if isinstance(v, int | float) else 0.0 for v in vals]
        lo = [
            max(0.0, x - g[f"{metric}_lo"])
            if isinstance(g.get(f"{metric}_lo"), int | float)
            else 0.0
            for x, g in zip(xs, groups, strict=True)
        ]
        hi = [
            max(0.0, g[f"{metric}_hi"] - x)
            if isinstance(g.get(f"{metric}_hi"), int | float)
            else 0.0
            for x, g in zip(xs, groups, strict=True)
        ]
        intervals = any(lo) or any(hi)
        ax.barh(
            ys,
            xs,
            color=colour,
            alpha=0.85,
            xerr=[lo, hi] if intervals else None,
            ecolor="#333",
            capsize=2,
        )
        for y, v in zip(ys, vals, strict=True):
            if not isinstance(v, int | float):
                ax.text(0.01, y, "not computable", va="center", fontsize=7, color="#6b7280")
        ax.set_xlim(0, 1)
        ax.set_title("AUROC" if metric == "auroc" else "false-negative rate")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(groups)))
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(
        f"{release.model} v{release.version} @{release.alias}: subgroups "
        "on the held-out test split",
        fontsize=10,
        y=1.0,
    )
    fig.tight_layout()
    return _png(fig)


# -------------------------------------------------------------------------------------- page


def render(report: AuditReport) -> str:
    n = len(report.findings)
    verdict = (
        '<span class="verdict ok">CLEAN: no findings</span>'
        if report.ok
        else f'<span class="verdict bad">{n} FINDING{"S" if n != 1 else ""}</span>'
    )
    led, pol = report.ledger, report.policy
    budget = pol.budget
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>dpgov audit {esc(report.generated)}</title><style>{CSS}</style></head>",
        "<body><main>",
        f"<h1>Privacy audit</h1><p>{verdict}</p>",
        f'<p class="meta">Generated {esc(report.generated)}'
        + (
            f"; restricted to what happened since {esc(report.since)} "
            f"({report.findings_before_since} older finding(s) left out)"
            if report.since
            else ""
        )
        + f". Ledger {esc(led.url)}; tracking store {esc(report.tracking.uri)}; policy "
        f"{esc(pol.path)} (sha256 <code>{esc(pol.sha256)}</code>): ε ≤ "
        f"{esc(budget.epsilon_per_block)} per block at δ = {esc(budget.delta)}, "
        f"{esc(budget.accountant)} accountant.</p>",
        _findings(report),
        _integrity(report),
        _budgets(report),
        _runs(report),
        _reservations(report),
        _releases(report),
        _policies(report),
        "</main></body></html>",
    ]
    return redact("\n".join(parts))  # no credential of any URL reaches the page


def _findings(report: AuditReport) -> str:
    out = ["<h2>Findings</h2>"]
    if not report.findings:
        out.append("<p>None: every check passed.</p>")
        return "".join(out)
    rows = []
    for finding in report.findings:
        f = finding.to_dict()
        where = ", ".join(f"{k}={v}" for k, v in f.items() if k not in ("kind", "detail"))
        rows.append([esc(f["kind"]), esc(f["detail"]), esc(where)])
    out.append(_table(["kind", "detail", "where"], rows, cls="finding"))
    return "".join(out)


def _integrity(report: AuditReport) -> str:
    led, anc = report.ledger, report.anchors
    chain = (
        "verifies"
        if led.chain_ok
        else f'<span class="warn">BROKEN at entry {esc(led.first_bad_seq)}: '
        f"{esc(led.reason)}</span>"
    )
    if led.hmac_key_set:
        hmac = (
            f"DPGOV_LEDGER_HMAC_KEY set: signatures checked ({led.signed_entries} signed, "
            f"{led.unsigned_entries} unsigned from before the key)"
        )
    elif led.signed_entries:
        hmac = (
            f"{led.signed_entries} entries are signed, but DPGOV_LEDGER_HMAC_KEY is not "
            "set here: signatures not checked"
        )
    else:
        hmac = "no HMAC key: entries are not signed (anchors protect against rewrites)"
    if anc.checked:
        anchors = (
            f"{anc.count} anchor(s) in the tracking store, {anc.matched} matching; "
            f"newest: entry {esc(anc.newest_seq)} ({esc(anc.newest_time)}); "
            f"{anc.unanchored_entries} entries after it"
        )
    else:
        anchors = '<span class="warn">not checked (tracking store unreadable)</span>'
    kinds = ", ".join(f"{k} {v}" for k, v in led.kinds.items())
    return (
        "<h2>Ledger integrity</h2><div class='card'><table><tbody>"
        f"<tr><th>entries</th><td>{led.entries} ({esc(kinds)}); "
        f"{esc(led.first_time)} … {esc(led.last_time)}</td></tr>"
        f"<tr><th>head</th><td>entry {led.head_seq}, <code>{esc(led.head_hash)}</code>"
        "</td></tr>"
        f"<tr><th>hash chain</th><td>{chain}</td></tr>"
        f"<tr><th>signatures</th><td>{esc(hmac)}</td></tr>"
        f"<tr><th>anchors</th><td>{anchors}</td></tr>"
        f"<tr><th>data versions (DVC)</th><td>{esc(report.dvc.searched)}</td></tr>"
        "</tbody></table></div>"
    )


def _budgets(report: AuditReport) -> str:
    blocks = report.blocks
    rows = [
        [
            esc(b.dataset),
            esc(b.block),
            esc(b.patients),
            esc(b.retired),
            eps_cell(b.epsilon),
            eps_cell(b.epsilon_ledger),
            esc(b.epsilon_limit),
            show_remaining(b.remaining),
            esc(b.charges),
            esc(b.pending),
            esc(b.aborted),
            esc(b.released),
        ]
        for b in blocks
    ]
    png = burn_down_png(blocks, float(report.policy.budget.epsilon_per_block))
    return (
        "<h2>Privacy budget per block</h2>"
        "<p>ε recomputed from scratch from the mechanisms in the ledger's entries, compared "
        "with the ledger's own figure. Spent ε is rounded up, remaining ε down.</p>"
        + _table(
            [
                "dataset",
                "block",
                "patients",
                "retired",
                "ε recomputed",
                "ε ledger",
                "limit",
                "remaining",
                "charges",
                "pending",
                "aborted",
                "released",
            ],
            rows,
            numeric=(2, 4, 5, 6, 7, 8, 9, 10, 11),
        )
        + _figure(
            png,
            "Budget burn-down per block",
            "ε each block had spent after each reservation, as the ledger recorded it "
            "then (at that reservation's δ); the last point is recomputed now. The dashed "
            "line is the policy's limit.",
        )
    )


def _runs(report: AuditReport) -> str:
    runs = report.runs
    rows = [
        [
            esc(r.time[:19].replace("T", " ")),
            f"<code>{esc(r.reservation[:8])}</code>",
            esc(r.status),
            esc(f"{r.dataset}/{','.join(r.blocks)}"),
            eps_cell(r.epsilon),
            esc(r.delta),
            esc(
                f"σ={r.mechanism.noise_multiplier:.4g} q={r.mechanism.sample_rate:.4g}"
                f" T={r.mechanism.steps}"
            ),
            esc(r.mlflow_run),
            esc(r.mlflow_status),
            esc(r.data_version),
        ]
        for r in reversed(runs)
    ]
    return (
        "<h2>ε per run</h2>"
        + _figure(
            runs_png(runs),
            "ε per run",
            "Each reservation's own ε (committed: the steps that ran; aborted and pending: "
            "the plan, still charged; released: nothing charged).",
        )
        + _table(
            [
                "reserved",
                "reservation",
                "status",
                "charged to",
                "ε",
                "δ",
                "mechanism",
                "MLflow run",
                "run status",
                "data version",
            ],
            rows,
            numeric=(4,),
        )
    )


def _reservations(report: AuditReport) -> str:
    res = report.reservations
    pending = [
        [
            esc(r.reservation),
            esc(r.time),
            esc(f"{r.age_hours:.1f} h"),
            esc(f"{r.dataset}/{','.join(r.blocks)}"),
            esc(r.run_id),
            '<span class="warn">stale</span>' if r.stale else "in progress?",
        ]
        for r in res.pending
    ]
    aborted = [
        [
            esc(r.reservation),
            esc(r.time),
            esc(r.closed_time),
            esc(f"{r.dataset}/{','.join(r.blocks)}"),
            esc(r.reason),
        ]
        for r in res.aborted
    ]
    out = [
        "<h2>Reservations left open or aborted</h2>",
        "<p>Pending and aborted reservations stay fully charged (a crash never returns "
        "budget).</p><h3>Pending</h3>",
    ]
    out.append(
        _table(["reservation", "reserved", "age", "charged to", "run", "state"], pending)
        if pending
        else "<p>None.</p>"
    )
    out.append("<h3>Aborted</h3>")
    out.append(
        _table(["reservation", "reserved", "aborted", "charged to", "reason"], aborted)
        if aborted
        else "<p>None.</p>"
    )
    return "".join(out)


def _releases(report: AuditReport) -> str:
    out = ["<h2>Released models</h2>"]
    if not report.releases:
        out.append("<p>No model version holds a release alias (or none through the gate).</p>")
        return "".join(out)
    if report.reference_releases:  # issue 16: releases that depended on a non-private model
        listed = "".join(
            f"<li>{esc(x.model)} version {esc(x.version)} @{esc(x.alias)}: {esc(x.sentence())}</li>"
            for x in report.reference_releases
        )
        out.append(
            f"<p>Released models that depended on a non-private reference:</p><ul>{listed}</ul>"
        )
    if report.evaluated_releases:  # issue 17: DP-evaluated test metrics and their cost
        listed = "".join(
            f"<li>{esc(x.model)} version {esc(x.version)} @{esc(x.alias)}: {esc(x.sentence())}</li>"
            for x in report.evaluated_releases
        )
        out.append(f"<p>Released models with DP-evaluated test metrics:</p><ul>{listed}</ul>")
    for rel in report.releases:
        out.append("<div class='card'>")
        out.append(f"<h3>{esc(rel.model)} version {esc(rel.version)} @{esc(rel.alias)}</h3>")
        check = rel.check
        approvals = ", ".join(f"{a.by} (entry {a.seq})" for a in check.approvals) or "—"
        out.append(
            f"<p>Promoted {esc(rel.promoted)} by {esc(rel.promoted_by)} (entry "
            f"{esc(rel.promotion_seq)}; replaced version {esc(rel.replaced)}), decision "
            f"entry {esc(check.decision_seq)}, approvals: {esc(approvals)}; run "
            f"<code>{esc(rel.run_id)}</code>.</p>"
        )
        if rel.statement is not None:
            out.append(_statement(rel, rel.statement))
        out.append("</div>")
    return "".join(out)


def _statement(rel: ReleaseRow, st: ReleaseStatement) -> str:
    out = ["<h3>Privacy statement</h3>", f"<pre>{esc(st.text)}</pre>"]
    if st.utility:
        out.append("<p>" + esc(", ".join(f"{k} {v:.4g}" for k, v in st.utility.items())) + "</p>")
    out.append(
        _figure(
            subgroups_png(rel),
            f"Subgroup metrics of {rel.model} v{rel.version}",
            "Per subgroup of each sensitive attribute, with bootstrap intervals where computed.",
        )
    )
    gaps = [
        [
            esc(g.get("attribute")),
            esc(g.get("metric")),
            esc(g.get("gap")),
            esc(g.get("lo")),
            esc(g.get("hi")),
            esc(g.get("groups_judged")),
        ]
        for g in st.gaps or []
        if isinstance(g, dict)
    ]
    if gaps:
        out.append(
            _table(
                ["attribute", "metric", "gap", "lo", "hi", "groups judged"],
                gaps,
                numeric=(2, 3, 4, 5),
            )
        )
    if st.artifact_problems:
        out.append('<p class="muted">' + esc("; ".join(st.artifact_problems)) + "</p>")
    return "".join(out)


def _policies(report: AuditReport) -> str:
    rows = [
        [
            f"<code>{esc(p.sha256)}</code>",
            esc(", ".join(p.paths) or "—"),
            esc(p.first_seen),
            esc(p.last_seen),
            esc(", ".join(f"{k} {v}" for k, v in p.entries.items())),
            "yes" if p.current else "",
        ]
        for p in report.policies
    ]
    return (
        "<h2>Policies in force</h2><p>Every policy the ledger's entries were made under, "
        "by the SHA-256 of the policy file.</p>"
        + (
            _table(["sha256", "paths", "first", "last", "entries", "current"], rows)
            if rows
            else "<p>None recorded.</p>"
        )
    )
