"""The picture stays true: the import graph of ``pipeline/`` (every import, at module level or
inside a function; those under ``if TYPE_CHECKING:`` do not run and are left out) has no
circle, and no lower component imports a higher one (docs/ARCHITECTURE.md's layers)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lower components never import the ones that drive them
LOWER = ("pipeline.sandbox", "pipeline.tasks", "pipeline.engines", "pipeline.trajectory", "pipeline.advantages",
         "pipeline.losses", "pipeline.tracking")  # fmt: skip
HIGHER = ("pipeline.rollout", "pipeline.learner", "pipeline.main", "pipeline.cli", "pipeline.launch", "pipeline.evaluate",
          "pipeline.microcosm", "pipeline.warmstart", "pipeline.viewer")  # fmt: skip
# (pipeline.config gathers every component's config; the command-line entry points of lower
# packages, e.g. `echo-rl tasks check`, read a recipe through it)


def _modules() -> dict[str, Path]:
    mods = {}
    for p in (ROOT / "pipeline").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _type_checking(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return isinstance(t, ast.Name) and t.id == "TYPE_CHECKING" or isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"


def _imports(tree: ast.AST, mods: dict) -> set[str]:
    """``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``."""
    out, todo = set(), [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
            out.update(subs or ([node.module] if node.module in mods else []))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
        todo.extend(ast.iter_child_nodes(node))
    return out


def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(ast.parse(p.read_text()), mods) - {name} for name, p in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert circles(graph()) == []


def test_no_lower_component_imports_a_higher_one():
    up = [f"{a} -> {b}" for a, bs in sorted(graph().items()) for b in sorted(bs) if a.startswith(LOWER) and b.startswith(HIGHER)]
    assert up == []


def test_the_check_sees_a_circle_and_an_upward_import():
    """Positive control: the same functions on a graph with a circle and an upward edge."""
    g = {"pipeline.sandbox.a": {"pipeline.sandbox.b"}, "pipeline.sandbox.b": {"pipeline.rollout.loop"},
         "pipeline.rollout.loop": {"pipeline.sandbox.a"}}  # fmt: skip
    assert circles(g) == [["pipeline.rollout.loop", "pipeline.sandbox.a", "pipeline.sandbox.b"]]
    mods = {"pipeline.x": None, "pipeline.y": None}
    assert _imports(ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pipeline.x\nimport pipeline.y"),
                    mods) == {"pipeline.y"}  # fmt: skip
    assert len(graph()) > 60  # it read the package
