"""``dpgov ledger keys | rotate-key | backup | restore``: the signing key's life and recovery
(docs/ledger.md, "Keys" and "Backup and restore")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from dpgov.cli._output import JsonOption, emit
from dpgov.cli.ledger import _open, ledger_app

NEW_KEY_ENV = "DPGOV_LEDGER_NEW_HMAC_KEY"


def register(app: typer.Typer) -> None:
    """The commands join ``dpgov ledger`` (registered by :mod:`dpgov.cli.ledger`)."""


@ledger_app.command("keys")
def keys(as_json: bool = JsonOption) -> None:
    """The ledger's signing keys as its chain records them, and whether the key set here is
    the one that signs now."""
    from dpgov.ledger.chain import keyring

    result = _open().verify()
    ring = keyring()
    current = ring.current_fingerprint() if ring is not None else None
    data = {
        "signatures": result.to_dict()["signatures"],
        "key_set": current,
        "key_set_signs": current is not None and current == result.active_key,
    }

    def render() -> None:
        if not result.key_events:
            typer.echo("no signing key recorded in the chain")
        for k in result.key_events:
            what = (
                "signing enabled" if k.kind == "signing_enabled" else f"rotated from {k.previous}"
            )
            typer.echo(f"entry {k.seq} ({k.time[:19]}, by {k.actor}): key {k.key}, {what}")
        if current is None:
            typer.echo("DPGOV_LEDGER_HMAC_KEY is not set")
        else:
            signs = "signs now" if data["key_set_signs"] else "is NOT the key that signs now"
            typer.echo(f"DPGOV_LEDGER_HMAC_KEY: key {current}, {signs}")

    emit(as_json, data, render)


def _new_key(path: Path | None) -> bytes:
    from dpgov.errors import UsageError
    from dpgov.ledger.recovery import check_new_key

    if path is not None:
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        except OSError as err:
            raise UsageError(f"cannot read the new key from {path}: {err.strerror}") from err
        return check_new_key(text.strip())
    value = os.environ.get(NEW_KEY_ENV)
    if not value:
        raise UsageError(f"give the new key in {NEW_KEY_ENV} or with --new-key-file")
    return check_new_key(value)


@ledger_app.command("rotate-key")
def rotate_key(
    new_key_file: Path | None = typer.Option(
        None,
        "--new-key-file",
        help=f"File holding the new key ('-': standard input); default: ${NEW_KEY_ENV}.",
    ),
    reason: str = typer.Option("scheduled rotation", "--reason"),
    as_json: bool = JsonOption,
) -> None:
    """Append a key_rotated entry, signed by the current key (DPGOV_LEDGER_HMAC_KEY), naming
    the new key; from then on the new key signs. Keep the old key for verifying
    (DPGOV_LEDGER_HMAC_OLD_KEYS)."""
    from dpgov.ledger.recovery import rotate_key as rotate

    key = _new_key(new_key_file)
    entry = rotate(_open().engine, key, reason=reason)
    data = {"seq": entry.seq, "previous": entry.payload["previous"], "key": entry.payload["key"]}
    emit(
        as_json,
        data,
        lambda: typer.echo(
            f"key rotated at entry {entry.seq}: {data['previous']} → {data['key']}; set "
            f"DPGOV_LEDGER_HMAC_KEY to the new key and add the old one to "
            f"DPGOV_LEDGER_HMAC_OLD_KEYS wherever the ledger is verified"
        ),
    )


@ledger_app.command("backup")
def backup(
    file: Path = typer.Argument(..., help="The backup file to write (must not exist)."),
    as_json: bool = JsonOption,
) -> None:
    """Write every entry and projection row, from one consistent snapshot, to FILE."""
    from dpgov.ledger.recovery import backup as write_backup

    info = write_backup(_open().engine, file)
    emit(
        as_json,
        info.to_dict(),
        lambda: typer.echo(
            f"backup {file}: {info.entries} entries, head entry {info.head_seq} "
            f"({info.head_hash[:16]})"
        ),
    )


@ledger_app.command("restore")
def restore(
    file: Path = typer.Argument(..., help="A backup written by dpgov ledger backup."),
    reason: str = typer.Option(..., "--reason", help="Why the ledger is restored."),
    as_json: bool = JsonOption,
) -> None:
    """Load a backup into an empty ledger database and append a chained `restored` entry
    naming the backup's head and the anchored entries lost since (read from the anchor file
    and the tracking store, which must be readable)."""
    from dpgov.cli._ledger_checks import tracking_anchor_points
    from dpgov.errors import Refused
    from dpgov.ledger.recovery import restore as load

    anchors, why = tracking_anchor_points()
    if why and "does not exist" not in why:
        raise Refused(f"cannot read the tracking store's anchors ({why}): restore when it answers")
    done = load(_open().engine, file, anchors=anchors, reason=reason)
    emit(
        as_json,
        done.to_dict(),
        lambda: typer.echo(
            f"restored from {file}: backup head entry {done.backup_seq}; "
            + (
                f"entries {done.backup_seq + 1}..{done.lost_through} (anchored) lost; "
                if done.lost_through > done.backup_seq
                else "nothing anchored was lost; "
            )
            + f"restored entry {done.entry.seq}"
        ),
    )
