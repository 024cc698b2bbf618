"""The layers' import rules, kept by reading the source (docs/concepts.md, "Architecture").

Every module of ``klarna_flow`` is parsed with ``ast``; every import counts,
at any depth: inside a function, under ``if TYPE_CHECKING:``. From them comes
the graph of imports inside the package, checked for cycles and against
``MAY_IMPORT``, the table of which layer may import which. The package is only
read, never imported, so a cycle shows here even when it would break imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import pytest

PACKAGE = "klarna_flow"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE
ROOT = "__init__"  # the layer of klarna_flow/__init__.py: the public names

LAYERS = (
    ROOT,
    "_errors",
    "_shared",
    "_domain",
    "klarna",
    "_store",
    "_audit",
    "_app",
    "testing",
    "cli",
    "asgi",
)
ANY = frozenset(LAYERS)

# Layer -> the other layers its modules may import (a layer may always import itself).
MAY_IMPORT: dict[str, frozenset[str]] = {
    ROOT: ANY,
    "_errors": frozenset(),
    "_shared": frozenset({"_errors"}),
    "_domain": frozenset({"_errors", "_shared"}),
    "klarna": frozenset({"_errors", "_shared"}),
    "_store": frozenset({"_errors", "_shared", "_domain"}),
    "_audit": frozenset({"_errors", "_shared", "_domain", "_store"}),
    "_app": frozenset({"_errors", "_shared", "_domain", "klarna", "_store", "_audit"}),
    "testing": frozenset({"_errors", "_shared", "_domain", "klarna"}),
    "cli": ANY,
    # The notification endpoint reaches the application through the public names.
    "asgi": frozenset({ROOT, "klarna"}),
}
# Module -> layers it may import beyond its layer's: the plugin's fixture builds Payments.
ALSO_MAY_IMPORT: dict[str, frozenset[str]] = {
    "klarna_flow.testing.pytest_plugin": frozenset({"_app"}),
}

# The domain is pure: no files, sockets, processes, event loops or storage.
IO_MODULES = (
    "sqlite3", "psycopg", "httpx", "socket", "os", "pathlib", "asyncio", "subprocess",
    "eventsourcing.persistence", "eventsourcing.sqlite", "eventsourcing.postgres",
    "eventsourcing.application",
)  # fmt: skip


@attrs.frozen
class Import:
    """One import statement's arrow: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str  # a module of the package, or an outside module's dotted name
    line: int

    def where(self) -> str:
        return f"{path_of(self.source)}:{self.line}"


def module_name(path: Path, root: Path = SOURCE) -> str:
    parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def path_of(module: str) -> str:
    relative = module.replace(".", "/")
    return f"{relative}/__init__.py" if (SOURCE.parent / relative).is_dir() else f"{relative}.py"


def is_under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return ROOT if len(parts) == 1 else parts[1]


def imports_in(module: str, source: str, is_package: bool, known: set[str]) -> Iterator[Import]:
    """Every arrow of one module: into the package (to a known module), or out of it."""
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{anchor}.{base}" if base else anchor
            # ``from base import name``: a submodule base.name if there is one, else base.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            if is_under(base, [PACKAGE]):
                names = [n if n in known else base for n in names[1:]]
        else:
            continue
        for name in names:
            yield Import(module, known_prefix(name, known), node.lineno)


def known_prefix(name: str, known: set[str]) -> str:
    """The package's module an import names (``import klarna_flow.mod.Name``: mod)."""
    if not is_under(name, [PACKAGE]):
        return name
    while name not in known:
        name = name.rpartition(".")[0]
    return name


def read_package() -> list[Import]:
    files = sorted(SOURCE.rglob("*.py"))
    known = {module_name(path) for path in files}
    found: set[Import] = set()
    for path in files:
        source = path.read_text(encoding="utf-8")
        found.update(imports_in(module_name(path), source, path.name == "__init__.py", known))
    return sorted(found, key=lambda i: (i.source, i.line, i.target))


IMPORTS = read_package()
MODULES = frozenset(module_name(path) for path in SOURCE.rglob("*.py"))
INTERNAL = [i for i in IMPORTS if i.target in MODULES]  # the arrows inside the package


def cycles(edges: Iterable[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module, and self-imports (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(starts: Iterable[str], edges: Iterable[Import]) -> set[str]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    seen, todo = set(starts), list(starts)
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# --- the reader itself -------------------------------------------------------------


def test_the_reader_sees_imports_at_any_depth() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from ..x import Name\n"
        "if TYPE_CHECKING:\n"
        "    from klarna_flow.p.c import Other\n"
        "def f():\n"
        "    import sqlite3\n"
    )
    known = {"klarna_flow", "klarna_flow.p", "klarna_flow.p.b", "klarna_flow.p.c", "klarna_flow.x"}

    found = {(i.target, i.line) for i in imports_in("klarna_flow.p.a", source, False, known)}

    assert found >= {
        ("klarna_flow.p.b", 2),
        ("klarna_flow.x", 3),
        ("klarna_flow.p.c", 5),
        ("sqlite3", 7),
    }


def test_the_cycle_finder_finds_pairs_and_self_imports() -> None:
    edges = [Import("a", "b", 1), Import("b", "a", 1), Import("c", "c", 1), Import("b", "d", 1)]

    assert cycles(edges) == [["a", "b"], ["c"]]


def test_the_reader_finds_the_package() -> None:
    assert "klarna_flow._app.payments" in MODULES
    assert len(INTERNAL) > 50


# --- the rules -----------------------------------------------------------------------


def test_the_rules_cover_every_layer() -> None:
    assert set(MAY_IMPORT) == ANY
    assert all(allowed <= ANY for allowed in MAY_IMPORT.values())
    assert all(layer_of(module) in MAY_IMPORT for module in ALSO_MAY_IMPORT)


def test_every_module_sits_in_a_layer() -> None:
    strays = [path_of(module) for module in MODULES if layer_of(module) not in ANY]

    if strays:
        pytest.fail(f"modules in no layer of {sorted(ANY)}: {strays}", pytrace=False)


def test_no_import_cycles() -> None:
    report = []
    for component in cycles(INTERNAL):
        members = set(component)
        arrows = [
            f"    {i.where()} imports {i.target}"
            for i in INTERNAL
            if i.source in members and i.target in members
        ]
        report.append(f"cycle among {', '.join(component)}:\n" + "\n".join(arrows))

    if report:
        message = "import cycles (with the arrows among their modules):\n" + "\n".join(report)
        pytest.fail(message, pytrace=False)


def test_every_import_follows_the_layer_rules() -> None:
    broken = []
    for i in INTERNAL:
        source, target = layer_of(i.source), layer_of(i.target)
        allowed = MAY_IMPORT.get(source, frozenset()) | ALSO_MAY_IMPORT.get(i.source, frozenset())
        if target != source and target not in allowed:
            only = ", ".join(sorted(allowed))
            rule = f"{source} may import only {only}" if only else f"{source} may import nothing"
            broken.append(f"{i.where()} imports {i.target} (layer {target}): {rule}")

    if broken:
        pytest.fail("imports against the layer rules:\n" + "\n".join(broken), pytrace=False)


@pytest.mark.parametrize(
    ("layer", "forbidden", "why"),
    [
        ("_domain", IO_MODULES, "the domain does no I/O"),
        ("klarna", ("eventsourcing",), "the Klarna adapter knows nothing of event sourcing"),
    ],
    ids=["domain-does-no-io", "klarna-knows-no-eventsourcing"],
)
def test_a_layer_stays_clear_of_modules(layer: str, forbidden: tuple[str, ...], why: str) -> None:
    # What the layer reaches inside the package counts too (for the domain: _shared, _errors).
    own = {module for module in MODULES if layer_of(module) == layer}
    reached = reachable(own, INTERNAL)
    broken: dict[str, str] = {}  # ``from httpx import Client`` names httpx and httpx.Client
    for i in IMPORTS:
        if i.source in reached and is_under(i.target, forbidden):
            broken.setdefault(i.where(), f"{i.where()} imports {i.target}")

    assert own
    if broken:
        pytest.fail(f"{why}, yet:\n" + "\n".join(broken.values()), pytrace=False)
