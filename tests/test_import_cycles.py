"""No import circle among msn's modules.

The graph has one edge per ``import``/``from ... import`` statement naming an ``msn_cli``
module, wherever it stands (module level, inside a function, under ``TYPE_CHECKING``): a
function-level import still ties the two modules together. ``from msn_cli.pkg import name``
points at ``msn_cli.pkg.name`` when that is a module, else at ``msn_cli.pkg``.

Run as a script to print the graph's cycles (``python tests/test_import_cycles.py``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "msn_cli"


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the msn modules its import statements name."""
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in mods else base)
            for t in targets:
                while t and t not in mods:  # ``import msn_cli.io.store as s`` and the like
                    t = t.rpartition(".")[0]
                if t and t != name and t.split(".")[0] == PACKAGE.name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


if __name__ == "__main__":
    g = import_graph()
    found = cycles(g)
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges, {len(found)} cycle(s)")
    for c in found:
        inner = {m: sorted(t for t in g[m] if t in c) for m in c}
        print("cycle: " + ", ".join(c))
        for m, ts in inner.items():
            print(f"  {m} -> {', '.join(ts)}")
    sys.exit(1 if found else 0)
