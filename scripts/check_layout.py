"""Layout rules that keep the architecture from growing back (run by scripts/test.sh).

1. No module of ``src/dpgov`` or ``pipelines`` is over 650 lines.
2. Internal imports (``dpgov``, ``pipelines``) sit at the top of a module: not inside a function
   or a class, except in ``dpgov.cli`` (a command imports what it runs, so ``dpgov --help``
   stays fast) and under ``if TYPE_CHECKING:``. Heavy third-party packages may stay lazy.
3. No import cycles among dpgov's and pipelines' modules (every import counts, lazy or not).

The layers themselves are import-linter's contracts in pyproject.toml (``lint-imports``).
Exit 1 with one line per violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 650
INTERNAL = ("dpgov", "pipelines")
LAZY_ALLOWED = ("src/dpgov/cli/",)


def modules() -> list[Path]:
    return sorted([*(ROOT / "src" / "dpgov").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")])


def _internal(node: ast.Import | ast.ImportFrom) -> str | None:
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative import: internal by definition
            return "." * node.level + (node.module or "")
        names = [node.module or ""]
    else:
        names = [a.name for a in node.names]
    for name in names:
        if name.split(".")[0] in INTERNAL:
            return name
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def nested_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Internal imports inside a function or class body (TYPE_CHECKING blocks excepted)."""
    found: list[tuple[int, str]] = []

    def walk(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom) and nested:
                name = _internal(child)
                if name is not None:
                    found.append((child.lineno, name))
            inner = nested or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda
            )
            walk(child, inner)

    walk(tree, False)
    return found


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph."""
    import grimp

    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    graph = grimp.build_graph(*INTERNAL, cache_dir=None)
    mods = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in mods}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, []):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in mods:
        if m not in index:
            strong(m)
    return out


def _package_init_edge(a: str, b: str) -> bool:
    """A package and its own submodule importing each other is how packages re-export."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def main() -> int:
    problems: list[str] = []
    for path in modules():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES:
            problems.append(f"{rel}: {n} lines, over {MAX_LINES}: split it by responsibility")
        if rel.startswith(LAZY_ALLOWED):
            continue
        for line, name in nested_imports(ast.parse(text)):
            problems.append(f"{rel}:{line}: internal import {name!r} inside a function or class")
    for comp in cycles():
        if len(comp) == 2 and _package_init_edge(*comp):
            continue
        problems.append("import cycle: " + " ↔ ".join(comp))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layout problem(s)")
        return 1
    print("layout: modules ≤ 650 lines, internal imports at the top, no import cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
