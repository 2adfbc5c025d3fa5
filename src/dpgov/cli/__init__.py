"""The ``dpgov`` command line (typer).

Exit codes everywhere: 0 success; 1 refused, blocked, or findings; 2 bad input or usage (one
clear line, no traceback). Command modules register themselves on :data:`app`; each keeps its
heavy imports inside the command functions so ``dpgov --help`` starts fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="dpgov",
    help="Differentially private training with a governed privacy budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
    context_settings={"help_option_names": ["-h", "--help"]},
)

# One module per command group; each defines ``register(app)``.
_COMMAND_MODULES = [
    "dpgov.cli.accounting",
    "dpgov.cli.ledger",
    "dpgov.cli.ledger_keys",
    "dpgov.cli.data",
    "dpgov.cli.gate",
    "dpgov.cli.run",
    "dpgov.cli.audit",
    "dpgov.cli.sweep",
    "dpgov.cli.schedule",
    "dpgov.cli.policy",
    "dpgov.cli.audit_model",
    "dpgov.cli.federated",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)

# Commands that never append to the ledger (their start-up stays free of the ledger's imports).
_NO_APPENDS = frozenset({"cost", "calibrate", "budget", "audit"})


def _print_version(value: bool) -> None:
    if value:
        from dpgov import __version__

        typer.echo(f"dpgov {__version__}")
        raise typer.Exit()


@app.callback()
def _anchor_every_append(
    ctx: typer.Context,
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_print_version,
        is_eager=True,
        help="Print dpgov's version and exit.",
    ),
) -> None:
    # Every entry a command appends is anchored in the tracking store once committed
    # (dpgov.ledger.anchoring; docs/ledger.md, "Anchors").
    if ctx.invoked_subcommand in _NO_APPENDS:
        return
    from dpgov.tracking.anchor import anchoring_appends

    ctx.with_resource(anchoring_appends())


def run() -> None:
    """The ``dpgov`` console script: :func:`main`, then a quick exit.

    Once every exit handler has run (Prefect stops its temporary server and flushes its logs
    and events, MLflow ends its runs, logging flushes its handlers, temporary folders go),
    tearing down the interpreter's modules (torch, Prefect, MLflow, …) takes 2–3 s here and
    does nothing for the user, so the process ends there. A crash (an internal bug) keeps the
    normal shutdown and its traceback. Tests call :func:`main` in-process instead.
    """
    import atexit
    import contextlib
    import os

    status: dict[str, int | None] = {"code": None}

    def finish() -> None:
        code = status["code"]
        if code is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe: nothing left to say
                stream.flush()
        os._exit(code)

    atexit.register(finish)  # registered first, so it runs after every other exit handler
    try:
        main()
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            status["code"] = int(err.code or 0)
        raise
    status["code"] = 0


def main() -> None:
    """Entry point: run the app, turning dpgov errors into one line and their exit code."""
    import os

    from dpgov import config
    from dpgov.cli._output import one_line, redact_logs
    from dpgov.errors import DpgovError

    # stdout is the command's output (--json): MLflow prints "View run ... at: URL" there when
    # a run ends on a tracking server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    redact_logs()
    config.created_ledgers.clear()
    try:
        config.export_project_home()  # DPGOV_HOME from a dpgov.toml, for every child too
        rc = app(standalone_mode=False)  # returns typer.Exit codes instead of raising them
    except DpgovError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        sys.exit(err.exit_code)
    except SystemExit:
        raise
    except _click_exceptions() as err:  # usage errors from click: exit 2, one line
        show = getattr(err, "show", None)
        if show is not None:
            show()
        sys.exit(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (UnicodeEncodeError, UnicodeDecodeError) as err:  # not UTF-8: an argument, a file
        where = err.object[max(0, err.start - 20) : err.end + 20]
        print(f"error: input is not UTF-8 text ({err.reason}, near {where!r})", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        known = _tracking_error(err)
        if known is None:
            raise  # an internal bug: keep its traceback
        print(f"error: {one_line(known[0])}", file=sys.stderr)
        sys.exit(known[1])
    if isinstance(rc, int) and rc:
        sys.exit(rc)
    if sys.argv[1:2] == ["demo"]:  # the demo sets up its own home: nothing to warn about
        config.created_ledgers.clear()
    for path in dict.fromkeys(config.created_ledgers):  # after a success (an error is one line)
        print(
            f"dpgov: no ledger was at {path}: created a new, empty one (DPGOV_HOME, "
            f"DPGOV_LEDGER_URL or a dpgov.toml names an existing ledger)",
            file=sys.stderr,
        )
    config.created_ledgers.clear()


def _tracking_error(err: Exception) -> tuple[str, int] | None:
    """One line and the exit code for an MLflow tracking store that does not answer (2) or
    refuses the request: authentication, permissions (1); None for anything else."""
    mlflow_errors = sys.modules.get("mlflow.exceptions")
    requests_errors = sys.modules.get("requests.exceptions")
    is_mlflow = mlflow_errors is not None and isinstance(err, mlflow_errors.MlflowException)
    is_http = requests_errors is not None and isinstance(err, requests_errors.RequestException)
    if not (is_mlflow or is_http):
        return None
    from dpgov import config
    from dpgov.errors import UsageError
    from dpgov.redaction import redact

    try:
        uri = redact(config.mlflow_tracking_uri())
    except UsageError:  # an unusable MLFLOW_TRACKING_URI
        uri = "MLFLOW_TRACKING_URI"
    text = str(getattr(err, "message", None) or err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    code = str(getattr(err, "error_code", ""))
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return f"tracking server {uri} refused the request ({code}): {first}", 1
    return f"tracking store {uri} failed: {first}", 2


def _click_exceptions() -> tuple[type[BaseException], ...]:
    import click

    found: list[type[BaseException]] = [click.exceptions.ClickException, click.exceptions.Abort]
    try:  # typer 0.2x parses with its own copy of click, whose exceptions are other classes
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort
    except ImportError:  # pragma: no cover - older typer uses click itself
        return tuple(found)
    return (*found, ClickException, Abort)
