"""Signed approvals: SSH signatures (``ssh-keygen -Y sign``) over a canonical message.

The message an approver signs names exactly what they decide on::

    dpgov-approval v1
    decision: approval | refusal
    model: <model>
    version: <version>
    run: <run id>
    reservation: <reservation id, or "none">
    facts_sha256: <the facts digest bound in the ledger at tracking time>

signed in the namespace :data:`NAMESPACE` (``ssh-keygen -Y sign -n dpgov-approval -f KEY``), so
a signature over anything else (another version, edited facts, the other decision) or made for
another purpose never verifies. The approver's public key is listed in the policy in force
(``approvals.ssh_keys``); the gate and the audit verify with ``ssh-keygen -Y verify`` against
that key alone (an allowed-signers file of one line written for the call).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from dpgov.errors import UsageError

NAMESPACE = "dpgov-approval"
TIMEOUT_S = 30
MAX_SIGNATURE = 16000


def approval_message(
    *,
    decision: str,
    model: str,
    version: str,
    run_id: str,
    reservation: str | None,
    facts_sha256: str | None,
) -> bytes:
    lines = [
        "dpgov-approval v1",
        f"decision: {decision}",
        f"model: {model}",
        f"version: {version}",
        f"run: {run_id}",
        f"reservation: {reservation or 'none'}",
        f"facts_sha256: {facts_sha256 or 'none'}",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise UsageError("signed approvals need ssh-keygen (OpenSSH 8.1 or later) on PATH")
    return found


def sign(message: bytes, key_file: Path) -> str:
    """Sign ``message`` with the private key ``key_file``; the armoured signature text."""
    if not key_file.is_file():
        raise UsageError(f"--sign {str(key_file)!r}: no such key file")
    with tempfile.TemporaryDirectory(prefix="dpgov-sign-") as tmp:
        msg = Path(tmp) / "message"
        msg.write_bytes(message)
        done = subprocess.run(
            [_ssh_keygen(), "-Y", "sign", "-q", "-n", NAMESPACE, "-f", str(key_file), str(msg)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        sig = Path(f"{msg}.sig")
        if done.returncode != 0 or not sig.exists():
            why = (done.stderr or done.stdout).strip().splitlines()
            raise UsageError(
                f"--sign {str(key_file)!r}: ssh-keygen could not sign: "
                f"{why[-1] if why else 'exit ' + str(done.returncode)}"
            )
        return sig.read_text(encoding="ascii")


def read_signature(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--signature {str(path)!r}: cannot read it: {err}") from None
    if "BEGIN SSH SIGNATURE" not in text or len(text) > MAX_SIGNATURE:
        raise UsageError(f"--signature {str(path)!r}: not an SSH signature (ssh-keygen -Y sign)")
    return text


def verify(message: bytes, signature: str, *, principal: str, public_key: str) -> bool:
    """Whether ``signature`` is ``public_key``'s signature of ``message`` in :data:`NAMESPACE`."""
    if not signature or len(signature) > MAX_SIGNATURE or "\n" in public_key.strip():
        return False
    with tempfile.TemporaryDirectory(prefix="dpgov-verify-") as tmp:
        allowed = Path(tmp) / "allowed_signers"
        allowed.write_text(f'{principal} namespaces="{NAMESPACE}" {public_key.strip()}\n')
        sig = Path(tmp) / "message.sig"
        sig.write_text(signature, encoding="ascii")
        try:
            done = subprocess.run(
                [
                    _ssh_keygen(),
                    "-Y",
                    "verify",
                    "-f",
                    str(allowed),
                    "-I",
                    principal,
                    "-n",
                    NAMESPACE,
                    "-s",
                    str(sig),
                ],
                input=message,
                capture_output=True,
                timeout=TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0
