"""The one YAML loader: every YAML file dpgov reads (policies, contracts, params, DVC files).

Part of the base (with :mod:`dpgov.errors`, :mod:`dpgov.config`, :mod:`dpgov.contracts`,
:mod:`dpgov.names`, :mod:`dpgov.redaction`): every layer may import it, and it imports nothing
of dpgov's layers. PyYAML's safe loader (pure Python, so the checks below see every node),
with what the safe loader lets through refused as one :class:`~dpgov.errors.UsageError` line
naming the file and the line:

- **duplicate keys** in any mapping, at any depth (PyYAML keeps the last one silently, so a
  second ``budget:`` would win); a merge key (``<<: *base``) may still be overridden;
- **deep nesting**: more than :data:`MAX_DEPTH` levels, counted while composing (the
  composer recurses, so 10^5 levels would otherwise end in a ``RecursionError``) and again
  with aliases expanded;
- **alias bombs** (billion laughs): a document whose aliases expand to more than
  :data:`MAX_VALUES` values, or an alias inside its own anchor (a recursive structure);
- files over :data:`MAX_BYTES`, and, through :func:`parse_mapping`, a top level that is not a
  mapping.

PyYAML is imported inside the functions, so ``dpgov --help`` does not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpgov.errors import UsageError

MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences accepted (aliases expanded)."""
MAX_VALUES = 100_000
"""Most nodes (keys, values, items) a document may expand to, aliases counted each time."""
MAX_BYTES = 16 * 1024 * 1024
"""Largest YAML text accepted."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refusal(Exception):
    """A problem found while loading; becomes a UsageError naming the file."""


_LOADER: Any = None


def _loader_class() -> Any:
    """The safe loader with the checks of this module (built once, on first use)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self.dpgov_depth = 0

        def fetch_flow_collection_start(self, token_class: Any) -> None:
            # the scanner reads ahead through every opening bracket: stop it at the limit
            if self.flow_level >= MAX_DEPTH:
                raise _Refusal(f"nested more than {MAX_DEPTH} levels deep (line {self.line + 1})")
            super().fetch_flow_collection_start(token_class)

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.dpgov_depth += 1
            try:
                if self.dpgov_depth > MAX_DEPTH:
                    line = self.peek_event().start_mark.line + 1
                    raise _Refusal(f"nested more than {MAX_DEPTH} levels deep (line {line})")
                return super().compose_node(parent, index)
            finally:
                self.dpgov_depth -= 1

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.get(key)
                except TypeError:  # unhashable: PyYAML names it below
                    continue
                line = key_node.start_mark.line + 1
                if seen is not None:
                    raise _Refusal(
                        f"duplicate key {_cut(key)} at line {line} (first at line {seen})"
                    )
                first[key] = line
            return super().construct_mapping(node, deep)

    _LOADER = Loader
    return Loader


def _cut(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _children(node: Any) -> list[Any]:
    value = node.value
    if not isinstance(value, list):
        return []  # a scalar
    if value and isinstance(value[0], tuple):  # a mapping: (key, value) pairs
        return [n for pair in value for n in pair]
    return list(value)


def _check_expansion(root: Any) -> None:
    """Size and depth of the document with every alias expanded, without recursion: each
    node's (size, depth) is computed once (aliases share their anchor's node), so a bomb is
    measured in time linear in its text, not in its expansion."""
    done: dict[int, tuple[int, int]] = {}
    path: set[int] = set()  # nodes whose children are being measured: the current path
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            children = _children(node)
            size = 1 + sum(done[id(c)][0] for c in children)
            depth = 1 + max((done[id(c)][1] for c in children), default=0)
            line = node.start_mark.line + 1
            if size > MAX_VALUES:
                raise _Refusal(
                    f"aliases expand to more than {MAX_VALUES} values (the node at line {line})"
                )
            if depth > MAX_DEPTH:
                raise _Refusal(
                    f"nested more than {MAX_DEPTH} levels deep once aliases are expanded "
                    f"(line {line})"
                )
            done[key] = (size, depth)
            path.discard(key)
            continue
        if key in done:
            continue
        path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in path:
                line = child.start_mark.line + 1
                raise _Refusal(f"an alias refers to its own anchor (line {line})")
            if id(child) not in done:
                stack.append((child, False))


def _problem(err: Exception) -> str:
    """One line for a PyYAML error: what, and where."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem:
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        text = f"{problem}{where}"
    else:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return " ".join(text.split())


def parse_yaml(text: str | bytes, *, where: str) -> Any:
    """The value of one YAML document (None when empty); ``where`` names it in errors.

    Raises :class:`UsageError` (one line: ``<where>: ...``) for text that is not YAML, more
    than one document, duplicate keys, nesting deeper than :data:`MAX_DEPTH`, aliases that
    expand past :data:`MAX_VALUES`, or more than :data:`MAX_BYTES`.
    """
    import yaml

    if len(text) > MAX_BYTES:
        raise UsageError(f"{where}: {len(text)} bytes, over the limit of {MAX_BYTES}")
    loader = None
    try:
        loader = _loader_class()(text)  # the reader decodes (and may refuse) the text here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _Refusal as err:
        raise UsageError(f"{where}: not accepted YAML: {err}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{where}: not valid YAML ({_problem(err)})") from err
    except (RecursionError, ValueError, OverflowError, TypeError) as err:
        # odd scalars (a timestamp out of range, ...) fail outside YAMLError
        detail = f"{type(err).__name__}: {_cut(str(err))}"
        raise UsageError(f"{where}: not valid YAML ({detail})") from err
    finally:
        if loader is not None:
            loader.dispose()


def parse_mapping(text: str | bytes, *, where: str, empty_ok: bool = False) -> dict[Any, Any]:
    """:func:`parse_yaml`, and the top level must be a mapping (an empty document is ``{}``
    when ``empty_ok``)."""
    data = parse_yaml(text, where=where)
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        found = "an empty document" if data is None else type(data).__name__
        raise UsageError(f"{where}: expected a mapping at top level, found {found}")
    return data


def read_bytes(path: str | Path, *, where: str) -> bytes:
    """The bytes of a YAML file, or one line naming it when it cannot be read."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_BYTES:
            raise UsageError(f"{where}: {size} bytes, over the limit of {MAX_BYTES}")
        return file.read_bytes()
    except OSError as err:
        raise UsageError(f"{where}: cannot read ({err.strerror or err})") from err


def load_mapping(path: str | Path, *, where: str, empty_ok: bool = False) -> dict[Any, Any]:
    """The mapping in the YAML file at ``path`` (:func:`read_bytes`, :func:`parse_mapping`)."""
    return parse_mapping(read_bytes(path, where=where), where=where, empty_ok=empty_ok)


__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "load_mapping",
    "parse_mapping",
    "parse_yaml",
    "read_bytes",
]
