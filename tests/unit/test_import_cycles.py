"""No import cycles between ``glimpse3d.*`` modules, found statically (the files are parsed, never imported).

An edge is a module-level import: imports inside functions and under ``if TYPE_CHECKING:`` are
left out, since they run after every module has loaded. ``from a.b import c`` is an edge to
``a.b.c`` when that is a module, else to ``a.b``. Generated code (glimpse3d.v1) is skipped.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOTS = ("shared/src", "gateway/src", "services/*/src", "research/src")
SKIP = ("glimpse3d.v1",)


def find_modules(repo_root: Path) -> dict[str, Path]:
    """Every ``glimpse3d.*`` module under :data:`ROOTS`: dotted name -> file (``__init__.py`` for packages)."""
    modules: dict[str, Path] = {}
    for pattern in ROOTS:
        for root in sorted(repo_root.glob(pattern)):
            for path in sorted((root / "glimpse3d").rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                name = ".".join(parts)
                if not any(name == s or name.startswith(s + ".") for s in SKIP):
                    modules[name] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions or classes' methods, not under TYPE_CHECKING."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _module_level_imports(block)
        elif isinstance(node, ast.With | ast.For | ast.While):
            yield from _module_level_imports(node.body)
        elif isinstance(node, ast.ClassDef):
            yield from _module_level_imports(node.body)


def _resolve_relative(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _module_level_imports(tree.body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve_relative(name, path.name == "__init__.py", node) if node.level else node.module
                if not source:
                    continue
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for imported in targets:
                # ``import a.b.c`` names a.b.c; fall back to the nearest known module above it.
                target = imported
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for succ in edges:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module, for the message (a breadth-first search)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    return component


def test_graph_follows_the_rules(tmp_path):
    src = tmp_path / "shared" / "src" / "glimpse3d"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("from glimpse3d.pkg.a import A\n")
    (src / "pkg" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nfrom glimpse3d.pkg import b\nfrom . import c\n"
        "if TYPE_CHECKING:\n    from glimpse3d.pkg.d import D\n"
        "def f():\n    from glimpse3d.pkg.d import D\nA = 1\n")
    for name in ("b", "c", "d"):
        (src / "pkg" / f"{name}.py").write_text("from glimpse3d.pkg.a import A\n")
    graph = import_graph(find_modules(tmp_path))
    assert graph["glimpse3d.pkg.a"] == {"glimpse3d.pkg.b", "glimpse3d.pkg.c"}
    assert graph["glimpse3d.pkg"] == {"glimpse3d.pkg.a"}
    assert strongly_connected(graph) == [["glimpse3d.pkg.a", "glimpse3d.pkg.b", "glimpse3d.pkg.c"]]
    assert a_cycle(graph, ["glimpse3d.pkg.a", "glimpse3d.pkg.b", "glimpse3d.pkg.c"]) == [
        "glimpse3d.pkg.a", "glimpse3d.pkg.b", "glimpse3d.pkg.a"]


def test_no_import_cycles(repo_root):
    modules = find_modules(repo_root)
    assert "glimpse3d.gateway.app" in modules and "glimpse3d.core" in modules
    graph = import_graph(modules)
    cycles = [" -> ".join(a_cycle(graph, c)) + f"  (component: {', '.join(c)})"
              for c in strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
