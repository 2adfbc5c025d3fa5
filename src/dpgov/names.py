"""The one name rule: which names dpgov accepts, checked where input enters.

Part of the base (importable from every layer; imports nothing of dpgov's layers).

**Identity names** (``--by`` of ``approve``/``refuse``/``flows answer``, ``DPGOV_ACTOR``, the
actor a ledger entry records, ``approvals.approvers`` of a policy) must already be in their one
normal form: :data:`IDENTITY_RULE`, i.e. ``[a-z0-9][a-z0-9._@-]{0,63}``, and unchanged by
Unicode NFKC normalisation and case folding. A name that is not is refused (never normalised
on the user's behalf), so two spellings can never count as two approvers and the name on record
is the one that was typed.

**Other names dpgov stores** (datasets, blocks, data versions, run ids, model names, aliases)
may hold any visible text, but are refused when they are empty, hold a control, format
(bidirectional overrides, zero-width characters), surrogate, private-use, unassigned or
non-ASCII space character, or are longer than the column that stores them
(:data:`NAME_MAX`, the ledger's ``String(200)``). **Integers** the ledger stores are refused
beyond their column (:data:`INT32_MAX` for ``Integer`` columns such as a block's patients).

Every refusal is a :class:`~dpgov.errors.UsageError` (exit 2): one line naming the argument,
with the value echoed back cut to :data:`ECHO_LIMIT` characters (:func:`quote`). Ledger
methods call :func:`storable` before they write anything; the command line calls
:func:`options`, which names the ``--option``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

from dpgov.errors import UsageError

IDENTITY_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
IDENTITY_RULE = (
    "1 to 64 characters of a-z, 0-9, '.', '_', '@', '-', starting with a letter or digit"
)
NAME_MAX = 200  # the ledger's String(200) columns (dataset, block, data_version, run_id)
MODEL_NAME_MAX = 256  # MLflow's registered model and experiment names
INT32_MAX = 2**31 - 1  # the ledger's Integer columns (patients, planned steps)
INT64_MAX = 2**63 - 1  # BigInteger columns
ECHO_LIMIT = 80

_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",  # bidi overrides, zero-width, BOM, soft hyphen
    "Cs": "an undecodable byte",  # lone surrogates: bytes that were not UTF-8
    "Co": "a private-use character",
    "Cn": "an unassigned character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a non-ASCII space",
}
_INVISIBLE_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}  # blank "letters"


def quote(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis (control and invisible
    characters appear escaped, as ``repr`` writes them)."""
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - a repr that fails: name the type instead
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def invisible(value: str) -> str | None:
    """The first character of ``value`` that a name may not hold, described, or None."""
    for i, ch in enumerate(value):
        category = unicodedata.category(ch)
        what = _REFUSED_CATEGORIES.get(category)
        if category == "Zs" and ch == " ":
            what = None
        if what is None and ch in _INVISIBLE_LETTERS:
            what = "an invisible character"
        if what is not None:
            name = unicodedata.name(ch, "") if category != "Cs" else ""
            code = f"U+{ord(ch):04X}" + (f" {name}" if name else "")
            return f"{what} ({code}) at position {i + 1}"
    return None


def identity(value: object, *, argument: str) -> str:
    """``value`` when it is an identity name (:data:`IDENTITY_RULE`); else UsageError."""
    if not isinstance(value, str):
        raise UsageError(f"{argument}: an identity name must be text, found {quote(value)}")
    if not value:
        raise UsageError(f"{argument}: the name is empty; identity names are {IDENTITY_RULE}")
    shown = f"{argument} {quote(value)}"
    bad = invisible(value)
    if bad is not None:
        raise UsageError(f"{shown}: holds {bad}; identity names are {IDENTITY_RULE}")
    normal = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    if normal != value:
        change = (
            "Unicode NFKC normalisation"
            if unicodedata.normalize("NFKC", value) != value
            else "case folding"
        )
        raise UsageError(
            f"{shown}: changes under {change} (its normal form is {quote(normal, 40)}); "
            f"identity names are {IDENTITY_RULE}"
        )
    if len(value) > 64:
        raise UsageError(f"{argument}: {len(value)} characters; identity names are {IDENTITY_RULE}")
    if not IDENTITY_PATTERN.fullmatch(value):
        odd = next((c for c in value if not re.fullmatch(r"[a-z0-9._@-]", c)), value[0])
        raise UsageError(f"{shown}: holds {odd!r}; identity names are {IDENTITY_RULE}")
    return value


def name(value: object, *, argument: str, max_length: int = NAME_MAX) -> str:
    """``value`` when it is a name dpgov may store (visible text, 1 to ``max_length``
    characters); else UsageError."""
    if not isinstance(value, str):
        raise UsageError(f"{argument}: a name must be text, found {quote(value)}")
    if not value.strip():
        raise UsageError(f"{argument}: the name is empty, found {quote(value)}")
    bad = invisible(value)
    if bad is not None:
        raise UsageError(f"{argument} {quote(value)}: holds {bad}; names must be visible text")
    if len(value) > max_length:
        raise UsageError(
            f"{argument} {quote(value)}: {len(value)} characters, over the limit of "
            f"{max_length} that dpgov stores"
        )
    return value


def integer(value: object, *, argument: str, minimum: int = 1, maximum: int = INT32_MAX) -> int:
    """``value`` when it is an integer in [minimum, maximum] (the column's range); else
    UsageError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{argument}: expected an integer, found {quote(value)}")
    if value < minimum:
        raise UsageError(f"{argument}: must be at least {minimum}, found {quote(value)}")
    if value > maximum:
        raise UsageError(
            f"{argument}: {quote(value)} is over {maximum}, the largest value the ledger stores"
        )
    return value


# What each input a ledger write or a command takes must be: field -> check.
_RULES = {
    "dataset": lambda v, a: name(v, argument=a),
    "block": lambda v, a: name(v, argument=a),
    "data_version": lambda v, a: name(v, argument=a),
    "run_id": lambda v, a: name(v, argument=a),
    "reservation": lambda v, a: name(v, argument=a, max_length=64),
    "model": lambda v, a: name(v, argument=a, max_length=MODEL_NAME_MAX),
    "alias": lambda v, a: name(v, argument=a, max_length=64),
    "actor": lambda v, a: identity(v, argument=a),
    "by": lambda v, a: identity(v, argument=a),
    "patients": lambda v, a: integer(v, argument=a),
    "steps": lambda v, a: integer(v, argument=a),
}
_PLURAL = {"blocks": "block"}
_POSITIONAL = {"reservation": "RESERVATION", "model": "MODEL"}  # command-line arguments


def check_fields(values: Mapping[str, object], *, cli: bool = False) -> None:
    """Check each value by the rule of its field (None: not given, nothing to check); a list
    under a plural field (``blocks``) is checked item by item. ``cli`` names the argument as
    its ``--option``."""
    for field, value in values.items():
        if value is None:
            continue
        single = _PLURAL.get(field, field)
        rule = _RULES[single]
        argument = single
        if cli:
            argument = _POSITIONAL.get(single) or "--" + single.replace("_", "-")
        items: Iterable[object] = (
            value if field in _PLURAL and isinstance(value, list | tuple) else [value]
        )
        for item in items:
            rule(item, argument)


def storable(**values: object) -> None:
    """What a ledger method is about to write: refused (UsageError) before anything is."""
    check_fields(values)


def options(**values: object) -> None:
    """A command's options, named as ``--option`` in the refusal."""
    check_fields(values, cli=True)


__all__ = [
    "ECHO_LIMIT",
    "IDENTITY_PATTERN",
    "IDENTITY_RULE",
    "INT32_MAX",
    "INT64_MAX",
    "MODEL_NAME_MAX",
    "NAME_MAX",
    "check_fields",
    "identity",
    "integer",
    "invisible",
    "name",
    "options",
    "quote",
    "storable",
]
