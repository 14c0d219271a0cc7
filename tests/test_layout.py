"""The shape of the code, held by a test: which plane imports what, no import cycles, and
modules and functions of a readable size (the rules of issue "Two planes, two packages").

Imports are read from the source with `ast` (type-only ones under `if TYPE_CHECKING:` and
those inside functions included), so the graph is the one a reader sees.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGES = ("bunancer", "stubs")
MAX_MODULE_LINES = 520  # "about 500"
MAX_FUNCTION_LINES = 65  # "about 60"
# The objects of one request call each other per request, typed as their classes so that
# compiled calls are direct (a Protocol would make each one a lookup by name): the client
# connection and its exchange, the upstream connection and its pool. Type-only
# back-references among these four, and only these, may close a cycle.
REQUEST_GROUP = frozenset(
    {
        "bunancer.core.downstream",
        "bunancer.core.exchange",
        "bunancer.core.upstream",
        "bunancer.core.connections",
    }
)
# The one module over "about 500" lines: a request's whole life is one compiled class whose
# request and response halves call each other per request; splitting it further would put
# an indirection on the hot path for the sake of a line count.
LONGER = {"bunancer.core.exchange": 600}
DATA_PLANE_MAY_NOT_IMPORT = ("bunancer.control", "bunancer.web", "bunancer.config", "pydantic")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_compiled" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, bool]]:
    """(imported module, type only) for every import in a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_only = nodes_under(tree, "TYPE_CHECKING")
    as_script = nodes_under(tree, "__name__ == '__main__'")  # runs as a program, not on import
    for node in ast.walk(tree):
        if id(node) in as_script:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base]
            # `from . import x` names a module, not an attribute.
            targets += [
                f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known
            ]
        for target in targets:
            yield target, id(node) in type_only


def nodes_under(tree: ast.Module, condition: str) -> set[int]:
    """The nodes inside `if <condition>:` blocks."""
    return {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and condition in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }


def graph(type_only: bool) -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, only_for_types in imports_of(name, path, known):
            if only_for_types and not type_only:
                continue
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_the_data_plane_imports_nothing_of_the_control_plane() -> None:
    known = modules()
    wrong = [
        f"{name} imports {target}"
        for name, path in known.items()
        if name.startswith("bunancer.core")
        for target, _ in imports_of(name, path, known)
        if target.startswith(DATA_PLANE_MAY_NOT_IMPORT)
        or (
            target.startswith("bunancer.")
            and not target.startswith(("bunancer.core", "bunancer.eventloop", "bunancer.native"))
        )
    ]
    assert not wrong, "\n".join(wrong)


def test_config_imports_neither_plane() -> None:
    known = modules()
    targets = [t for t, _ in imports_of("bunancer.config", known["bunancer.config"], known)]
    assert not [t for t in targets if t.startswith(("bunancer.core", "bunancer.control"))]


def test_no_import_cycles_at_run_time() -> None:
    assert cycles(graph(type_only=False)) == []


def test_type_only_cycles_only_among_the_objects_of_one_request() -> None:
    found = cycles(graph(type_only=True))
    assert all(component <= REQUEST_GROUP for component in found), found


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_readable(name: str) -> None:
    path = modules()[name]
    lines = path.read_text().count("\n")
    assert lines <= LONGER.get(name, MAX_MODULE_LINES), f"{path.relative_to(ROOT)}: {lines} lines"
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long, f"{path.relative_to(ROOT)}: {', '.join(long)}"
