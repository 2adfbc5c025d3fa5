"""Credentials never leave dpgov: one redaction for every URL it prints or writes.

Part of the base (importable from every layer; imports nothing of dpgov's layers). The ledger
URL (``DPGOV_LEDGER_URL``) and the tracking URI (``MLFLOW_TRACKING_URI``) may carry secrets;
:func:`redact` replaces them in any text, wherever a URL sits in it (an error from a driver,
a finding, a page of the report):

- the password of a URL's user part: ``postgresql://u:***@host/db`` (SQLAlchemy's own
  ``hide_password`` form, so names made either way agree); in ``http(s)``/``ws(s)`` URLs a user
  part without a password is replaced whole (``https://***@host/``: a token often stands there
  alone);
- the value of any query parameter whose name holds ``pass``, ``pwd``, ``token``, ``secret``,
  ``key``, ``sig``, ``credential`` or ``auth`` (``?password=***``, ``&X-Amz-Signature=***``),
  with or without a scheme before it (drivers often quote the path and query alone);
- ``Bearer``/``Basic`` authorisation values.

:func:`redact` is idempotent. :func:`port_problem` says what is wrong with a URL's port (a
non-numeric port would otherwise end in a ``ValueError`` deep inside SQLAlchemy).
"""

from __future__ import annotations

import re

MASK = "***"

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s?#'\"<>]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<lead>[?&;])(?P<key>[A-Za-z0-9_.\-]*(?:pass|pwd|token|secret|key|sig|credential|auth)"
    r"[A-Za-z0-9_.\-]*)=(?P<value>[^&;#\s'\"<>]*)",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(r"\b(?P<kind>Bearer|Basic)\s+(?P<value>[A-Za-z0-9._~+/=\-]{8,})")
_TOKEN_SCHEMES = ("http://", "https://", "ws://", "wss://")
_NETLOC = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://(?P<netloc>[^/?#]*)")


def _userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{scheme}{user}:{MASK}@"
    if scheme.lower() in _TOKEN_SCHEMES and userinfo != MASK:
        return f"{scheme}{MASK}@"
    return match.group(0)


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    if not isinstance(text, str) or not text:
        return text
    if "@" in text:
        text = _USERINFO.sub(_userinfo, text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda m: f"{m.group('lead')}{m.group('key')}={MASK}", text)
    if "Bearer" in text or "Basic" in text:
        text = _AUTH_HEADER.sub(lambda m: f"{m.group('kind')} {MASK}", text)
    return text


def port_problem(url: str) -> str | None:
    """Why the port of ``url`` (``scheme://[user@]host[:port]/...``) is unusable, or None."""
    found = _NETLOC.match(url)
    if found is None:
        return None
    hostport = found.group("netloc").rpartition("@")[2]
    if hostport.startswith("["):  # [IPv6]:port
        rest = hostport.partition("]")[2]
        if not rest:
            return None
        if not rest.startswith(":"):
            return f"unexpected text {rest[:20]!r} after the host"
        port = rest[1:]
    else:
        _, colon, port = hostport.partition(":")
        if not colon:
            return None
    if not re.fullmatch(r"[0-9]{1,5}", port):
        shown = port if len(port) <= 20 else port[:19] + "…"
        return f"port {shown!r} is not a number"
    if not 1 <= int(port) <= 65535:
        return f"port {int(port)} is outside 1-65535"
    return None


__all__ = ["MASK", "port_problem", "redact"]
