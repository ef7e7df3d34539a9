"""No module of syncd imports a module that imports it back, not even under `if TYPE_CHECKING:`
or inside a function: each layer sees only the ones below it (the emulator, a program of its
own, aside). The graph is read from the source with `ast`; no PostgreSQL needed."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "syncd"
EXCLUDED = ("syncd.emulator",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {
        name: path
        for name, path in found.items()
        if not any(name == x or name.startswith(x + ".") for x in EXCLUDED)
    }


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The syncd modules `name` imports anywhere in its file: `import a.b`, `from a import b`
    (b a submodule, or a name in a's `__init__`), relative imports; importing a module of a
    package from outside it runs the package's `__init__` too."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in known else source)
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # the package `syncd` itself imports nothing
            module = ".".join(parts[:i])
            outside = not name.startswith(module + ".")
            if module in known and module != name and (outside or i == len(parts)):
                edges.add(module)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Per strongly connected component (Tarjan): one cycle (a path back to its start) and the
    component's other modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[list[str], list[str]]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycle = path_back(graph, min(component), component)
                found.append((cycle, sorted(component - set(cycle))))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def path_back(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest import path from `start` back to itself inside one component."""
    paths = {start: [start]}
    queue = [start]
    for v in queue:
        for w in sorted(graph[v] & within):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{start} is not on a cycle")


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_no_module_imports_one_that_imports_it_back() -> None:
    lines = [
        " -> ".join(cycle) + (f" (tied up with {', '.join(others)} too)" if others else "")
        for cycle, others in cycles(import_graph())
    ]
    assert not lines, "import cycles:\n" + "\n".join(lines)


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader itself: function-level, TYPE_CHECKING, relative and package imports."""
    known = {
        "syncd.a": tmp_path / "a.py",
        "syncd.b": tmp_path / "b.py",
        "syncd.pkg": tmp_path / "pkg" / "__init__.py",
        "syncd.pkg.run": tmp_path / "pkg" / "run.py",
        "syncd.pkg.sweep": tmp_path / "pkg" / "sweep.py",
    }
    sources = {
        "syncd.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from syncd.b import X\n",
        "syncd.b": "def f():\n    from syncd.pkg.run import Y\n",
        "syncd.pkg": "from .run import Y\nfrom . import sweep\n",
        "syncd.pkg.run": "from syncd.pkg import sweep\nimport syncd.a\n",
        "syncd.pkg.sweep": "from syncd import metrics\n",
    }
    for name, path in known.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sources[name])
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert graph == {
        "syncd.a": {"syncd.b"},
        "syncd.b": {"syncd.pkg", "syncd.pkg.run"},
        "syncd.pkg": {"syncd.pkg.run", "syncd.pkg.sweep"},
        "syncd.pkg.run": {"syncd.pkg.sweep", "syncd.a"},
        "syncd.pkg.sweep": set(),
    }
    assert cycles(graph) == [(["syncd.a", "syncd.b", "syncd.pkg.run", "syncd.a"], ["syncd.pkg"])]
