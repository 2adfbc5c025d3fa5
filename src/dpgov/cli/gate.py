"""``dpgov gate``, ``dpgov approve``, ``dpgov refuse``, ``dpgov promote`` and ``dpgov recall``.

They enforce the policy in force on the ledger (:func:`dpgov.gate.in_force.policy_in_force`,
for the candidate's dataset) and take no ``--policy``; ``gate --preview --policy F`` is the one
what-if: it judges by F and records nothing. Who acts is the identity the deployment
authenticates (:func:`dpgov.identity.acting_identity`), never a typed name.

Exit codes: 0 allowed / recorded / promoted / recalled; 1 blocked (every failing check is
listed); 2 bad input (unknown model or version, ``--by`` not who acts, approver not allowed,
a ``--policy`` on an enforcing command: nothing recorded).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dpgov import names
from dpgov.cli._output import JsonOption, NoPolicyOption, PolicyOption, console, emit, eps_up

if TYPE_CHECKING:
    from dpgov.gate.decision import Check, Decision
    from dpgov.ledger import Ledger
    from dpgov.policy import LoadedPolicy
    from dpgov.tracking.registry import Registry

ModelArg = typer.Argument(..., help="Registered model name.", show_default=False)
VersionArg = typer.Argument(..., help="Model version number.", show_default=False)
ByOption = typer.Option(
    None,
    "--by",
    help="The approver's name as the policy lists it; it must be who acts (the authenticated "
    "identity) or be mapped to it in approvals.identities. Default: who acts.",
    show_default=False,
)
SignOption = typer.Option(
    None,
    "--sign",
    help="Sign with this SSH private key (ssh-keygen -Y sign -n dpgov-approval).",
    show_default=False,
)
SignatureOption = typer.Option(
    None,
    "--signature",
    help="An SSH signature made elsewhere over `dpgov approve ... --print-message`.",
    show_default=False,
)
PrintMessageOption = typer.Option(
    False, "--print-message", help="Print the message to sign and record nothing."
)


def register(app: typer.Typer) -> None:
    app.command("gate")(gate)
    app.command("approve")(approve)
    app.command("refuse")(refuse)
    app.command("promote")(promote)
    app.command("recall")(recall)


@contextmanager
def _services(
    model: str, version: str, what_if: Path | None = None, *, identify: bool = False
) -> Iterator[tuple[LoadedPolicy, Ledger, Registry]]:
    """Ledger and registry, and the policy in force for the candidate's dataset (or, for a
    what-if, the policy file given). ``identify``: establish who acts before anything else is
    read (credentials the deployment refuses: one line, exit 2)."""
    from dpgov.gate.candidate import load_candidate
    from dpgov.gate.in_force import policy_in_force
    from dpgov.identity import acting_identity
    from dpgov.ledger import Ledger
    from dpgov.policy import load_policy
    from dpgov.tracking.registry import Registry

    preview = load_policy(what_if) if what_if is not None else None
    ledger = Ledger.open()
    try:
        if identify:
            acting_identity(ledger)
        registry = Registry()
        if preview is not None:
            loaded = preview
        else:
            facts, _ = load_candidate(registry, model, version)
            loaded = policy_in_force(ledger, facts.dataset)
        yield loaded, ledger, registry
    finally:
        ledger.close()


def _fmt(check: Check, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if check.name == "release_epsilon" or check.name.startswith("block_budget"):
            return eps_up(value)
        return f"{value:.4g}"
    return str(value)


GATE_WIDE = 110  # columns from which the observed and limit columns are shown too


def render_decision(decision: Decision, policy_path: Path | str) -> None:
    """One line per check where it fits at the terminal's width (80 when piped): the reason,
    which states the figures it judged, wraps in the last column; names are never cut. From
    :data:`GATE_WIDE` columns the observed value and the limit have columns of their own."""
    from dpgov.cli._output import table

    out = console()
    wide = out.width >= GATE_WIDE
    verdict = "[bold green]ALLOWED[/]" if decision.allowed else "[bold red]BLOCKED[/]"
    sha = (decision.policy_sha256 or "")[:12]
    figures = "" if wide else "; observed and limit: --json, or a wider terminal"
    noisy = any(c.noise_scale is not None for c in decision.checks)
    t = table(
        title=f"gate: {decision.model} version {decision.version} — {verdict}",
        caption=f"policy {policy_path} (sha256 {sha}…); ok/FAIL: each check's result{figures}"
        + (evaluation_caption(decision) if decision.evaluation is not None else ""),
    )
    t.add_column("", no_wrap=True)
    t.add_column("check", overflow="fold")
    if wide:
        t.add_column("observed", justify="right", no_wrap=True)
        t.add_column("limit", justify="right", no_wrap=True)
    if noisy:  # judged on a DP-evaluated release: the noise beside each figure
        t.add_column("noise", justify="right", no_wrap=True)
    t.add_column("reason", ratio=1)
    for c in decision.checks:
        figures_cells = [_fmt(c, c.observed), _fmt(c, c.limit)] if wide else []
        noise_cells = [noise_cell(c.noise_scale)] if noisy else []
        t.add_row(
            "[green]ok[/]" if c.passed else "[bold red]FAIL[/]",
            c.name,
            *figures_cells,
            *noise_cells,
            c.reason,
        )
    out.print(t)


def noise_cell(scale: float | None) -> str:
    """A check's noise scale as the table shows it: ``±`` the standard deviation of the
    judged figure due to the release's noise alone; blank for checks not judged on one."""
    return "" if scale is None else f"±{scale:.2g}"


def evaluation_caption(decision: Decision) -> str:
    """What the caption adds for a gate judged on a DP-evaluated release."""
    ev = decision.evaluation
    if ev is None:
        return ""
    if not ev.recorded:
        return "; evaluation.private: no DP-evaluated release recorded"
    spent = "; fresh test data is needed for another release" if ev.fresh_test_data_needed else ""
    eta = f"{ev.eta_check:.2g}" if ev.eta_check is not None else "—"
    return (
        f"; DP-evaluated release (attempt {ev.attempt}, ε={ev.epsilon:.3g}): floors on lower "
        f"and limits on upper bounds at η={eta} each ({ev.bounds} bounds, η={ev.eta:g} in "
        f"all); noise: ± the judged figure's standard deviation from the noise alone{spent}"
    )


def gate(
    model: str = ModelArg,
    version: str = VersionArg,
    preview: bool = typer.Option(
        False, "--preview", help="What-if: evaluate and print, record nothing."
    ),
    policy: Path | None = PolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Evaluate the policy in force for a model version now, print every check, and record the
    decision (ledger entry and model-version tags). Exit 0 allowed, 1 blocked. With
    ``--preview`` (what-if: nothing is recorded) ``--policy F`` judges by F instead."""
    from dpgov.errors import Refused, UsageError
    from dpgov.gate.candidate import parse_version
    from dpgov.gate.service import run_gate

    names.options(model=model)
    version = parse_version(version)
    if policy is not None and not preview:
        raise UsageError(
            "--policy: the gate enforces the policy in force on the ledger; a policy file is "
            "only for a what-if (`dpgov gate --preview --policy F`, nothing recorded), and "
            "`dpgov policy set FILE --reason TEXT` changes the policy in force"
        )
    extra: dict[str, Any] = {}
    with _services(model, version, policy) as (loaded, ledger, registry):
        result = run_gate(model, version, loaded, ledger, registry, record=not preview)
        if preview:  # read-only: what the release would state, and whose policy judged it
            extra = {
                "statement": run_statement(registry, model, version),
                "policy_source": policy_source(ledger, loaded, from_file=policy is not None),
            }
    decision = result.decision
    data = {
        **decision.to_dict(),
        "ledger_seq": result.entry.seq if result.entry else None,
        "policy_path": str(loaded.path),
        "preview": preview,
        **extra,
    }

    def show() -> None:
        render_decision(decision, loaded.path)
        if preview:
            src = extra["policy_source"]
            console().print(
                f"preview: nothing recorded; policy {src['kind']}"
                + (
                    f" (ledger entry {src['seq']}, set by {src['set_by']})"
                    if src.get("seq")
                    else ""
                )
            )
            statement = extra["statement"]
            if statement and statement.get("text"):
                console().print(statement["text"])

    emit(as_json, data, show)
    if not decision.allowed:
        raise Refused(decision.summary())


def run_statement(registry: Registry, model: str, version: str) -> dict[str, Any] | None:
    """The privacy statement the version's training run logged (``privacy_statement.json``,
    with its text), read from the tracking store; None when the run logged none."""
    import json
    import tempfile

    from dpgov.contracts import ARTIFACT_PRIVACY_STATEMENT
    from dpgov.tracking.reader.client import download
    from dpgov.training.records import statement_text

    run_id = registry.model_version(model, version).run_id
    if run_id is None:
        return None
    with tempfile.TemporaryDirectory(prefix="dpgov-preview-") as tmp:
        try:
            path = download(registry.client, str(run_id), ARTIFACT_PRIVACY_STATEMENT, tmp)
            statement = json.loads(path.read_text())
        except Exception:  # absent or unreadable: the preview says none
            return None
    if not isinstance(statement, dict):
        return None
    try:
        text = statement_text(statement)
    except (KeyError, TypeError, ValueError):
        text = None
    return {"run_id": str(run_id), "statement": statement, "text": text}


def policy_source(ledger: Ledger, loaded: LoadedPolicy, *, from_file: bool) -> dict[str, Any]:
    """Where the judging policy came from: a what-if file, the packaged policy (in force while
    no `dpgov policy set` changed it), or the ledger entry that put it in force."""
    from dpgov.gate.in_force import record_in_force

    if from_file:
        return {"kind": "file", "path": str(loaded.path), "sha256": loaded.sha256}
    rec = record_in_force(ledger, loaded.dataset)
    return {
        "kind": "packaged" if rec.seq == 0 else "ledger",
        "seq": rec.seq or None,
        "dataset": rec.dataset,
        "set_by": rec.set_by if rec.seq else None,
        "reason": rec.reason if rec.seq else None,
        "path": str(loaded.path),
        "sha256": loaded.sha256,
    }


def _signature(sign: Path | None, signature: Path | None, message: bytes) -> str | None:
    from dpgov.errors import UsageError
    from dpgov.gate import signatures

    if sign is not None and signature is not None:
        raise UsageError("--sign and --signature: give one of them")
    if sign is not None:
        return signatures.sign(message, sign)
    if signature is not None:
        return signatures.read_signature(signature)
    return None


def _approval_cmd(
    kind: str,
    model: str,
    version: str,
    by: str | None,
    text: str,
    *,
    sign: Path | None,
    signature: Path | None,
    print_message: bool,
    as_json: bool,
) -> None:
    from dpgov.errors import UsageError
    from dpgov.gate.approvals import message_for, record_approval, record_refusal
    from dpgov.gate.candidate import parse_version
    from dpgov.gate.standing import summarize
    from dpgov.ledger.releases import binding_of

    names.options(model=model, **({"by": by} if by is not None else {}))
    version = parse_version(version)
    with _services(model, version, identify=True) as (loaded, ledger, registry):
        binding = binding_of(ledger, model, version)
        if binding is None:
            raise UsageError(
                f"model {model} version {version} has no facts bound in the ledger (not "
                "registered by dpgov tracking): the gate blocks it; nothing recorded"
            )
        message = message_for(kind, model, version, binding)
        if print_message:
            typer.echo(message.decode("utf-8"), nl=False)
            return
        sig = _signature(sign, signature, message)
        common: dict[str, Any] = {
            "model": model,
            "version": version,
            "by": by,
            "policy": loaded,
            "ledger": ledger,
            "registry": registry,
            "signature": sig,
        }
        if kind == "approval":
            entry, records = record_approval(note=text, **common)
        else:
            entry, records = record_refusal(reason=text, **common)
    state = summarize(records, loaded.policy.approvals, entry.payload["author"])
    data = {
        "recorded": kind,
        "model": model,
        "version": version,
        "by": entry.payload["by"],
        "identity": entry.payload["identity"],
        "authenticated_by": entry.payload["authenticated_by"],
        "signed": sig is not None,
        "ledger_seq": entry.seq,
        "time": entry.time,
        **state,
    }

    def render() -> None:
        counted = ", ".join(a["by"] for a in state["approvals"]) or "none"
        refusals = ", ".join(f"{r['by']} ({r['text']})" for r in state["refusals"]) or "none"
        typer.echo(
            f"{kind} by {entry.payload['by']} (authenticated as {entry.payload['identity']}, "
            f"{entry.payload['authenticated_by']}) of {model} version {version} recorded "
            f"(ledger entry {entry.seq})"
        )
        typer.echo(
            f"approvals: {len(state['approvals'])} of {state['required']} required "
            f"({counted}); standing refusals: {refusals}"
        )

    emit(as_json, data, render)


def approve(
    model: str = ModelArg,
    version: str = VersionArg,
    by: str | None = ByOption,
    note: str = typer.Option("", "--note", help="Why: recorded with the approval."),
    sign: Path | None = SignOption,
    signature: Path | None = SignatureOption,
    print_message: bool = PrintMessageOption,
    policy: str | None = NoPolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Record an approval of a model version by who acts (ledger and model-version tags)."""
    _approval_cmd(
        "approval",
        model,
        version,
        by,
        note,
        sign=sign,
        signature=signature,
        print_message=print_message,
        as_json=as_json,
    )


def refuse(
    model: str = ModelArg,
    version: str = VersionArg,
    by: str | None = ByOption,
    reason: str = typer.Option(..., "--reason", help="Why: recorded with the refusal."),
    sign: Path | None = SignOption,
    signature: Path | None = SignatureOption,
    print_message: bool = PrintMessageOption,
    policy: str | None = NoPolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Record a refusal: it blocks promotion until the same approver approves the version."""
    _approval_cmd(
        "refusal",
        model,
        version,
        by,
        reason,
        sign=sign,
        signature=signature,
        print_message=print_message,
        as_json=as_json,
    )


def promote(
    model: str = ModelArg,
    version: str = VersionArg,
    alias: str | None = typer.Option(
        None, "--alias", help="Registry alias to move (default: the policy's release.alias)."
    ),
    policy: str | None = NoPolicyOption,
    as_json: bool = JsonOption,
) -> None:
    """Re-check the gate now under the policy in force and, if every check passes, point the
    alias at this version. Rollback to an older version goes through the same gate. A recalled
    version never passes. Exit 1 when blocked."""
    from dpgov.gate import promotion as promo
    from dpgov.gate.candidate import parse_version

    names.options(model=model, alias=alias)
    version = parse_version(version)
    with _services(model, version) as (loaded, ledger, registry):
        try:
            result = promo.promote(
                model=model,
                version=version,
                alias=alias,
                policy=loaded,
                ledger=ledger,
                registry=registry,
            )
        except promo.PromotionBlocked as blocked:
            decision, path = blocked.decision, loaded.path
            data = {"promoted": False, "alias": blocked.alias, "decision": decision.to_dict()}
            emit(as_json, data, lambda: render_decision(decision, path))
            raise

    def render() -> None:
        if not result.promoted:
            typer.echo(
                f"{model} version {version} already holds @{result.alias}; gate passes, "
                f"nothing moved"
            )
            return
        before = f"replaced version {result.replaced}" if result.replaced else "first release"
        kind = "rolled back" if result.rollback else "promoted"
        seq = result.entry.seq if result.entry else "?"
        typer.echo(
            f"{kind} {model} version {version} to @{result.alias} ({before}; ledger entry {seq})"
        )

    emit(as_json, result.to_dict(), render)


def recall(
    model: str = ModelArg,
    version: str = VersionArg,
    reason: str = typer.Option(..., "--reason", help="Why the release is void: recorded."),
    alias: str | None = typer.Option(
        None, "--alias", help="Release alias to move away (default: the policy's release.alias)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Recall a released version: record it (by who acts), void its privacy statement, and move
    the alias back to the previous release that still passes the gate, else delete it."""
    from dpgov.gate import recall as rec
    from dpgov.gate.candidate import parse_version

    names.options(model=model, alias=alias)
    version = parse_version(version)
    with _services(model, version) as (loaded, ledger, registry):
        result = rec.recall(
            model=model,
            version=version,
            reason=reason,
            alias=alias,
            policy=loaded,
            ledger=ledger,
            registry=registry,
        )

    def render() -> None:
        if not result.alias_moved:
            where = f"@{result.alias} did not point at it; the alias is unchanged"
        elif result.moved_to:
            where = f"@{result.alias} moved back to version {result.moved_to}"
        else:
            where = f"@{result.alias} deleted (no earlier release passes the gate)"
        typer.echo(
            f"recalled {model} version {version} (ledger entry {result.entry.seq}, by "
            f"{result.identity.name}); its privacy statement is void; {where}"
        )

    emit(as_json, result.to_dict(), render)
