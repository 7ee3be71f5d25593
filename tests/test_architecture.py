"""The package's layers point only down, and no module imports itself back through others.

Layers, lowest first: base (paths, io, runtime, report, assets, data) -> faces -> models -> protect -> evaluate
-> study (orchestration, plots, widgets, notebook set-up) -> entry points (run, cli). Every import of a
``protego_nb`` module, at module level or inside a function, must go to the same layer or a lower one, and the
run-time import graph must have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "protego_nb"

LAYERS = [
    ("base", ("paths", "io", "runtime", "report", "assets", "data", "")),
    ("faces", ("faces",)),
    ("models", ("models",)),
    ("protect", ("protect",)),
    ("evaluate", ("evaluate",)),
    ("study", ("study", "plots", "plots_uv", "plots_pose", "widgets", "notebook")),
    ("entry", ("run", "cli")),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for rank, (_, tops) in enumerate(LAYERS):
        if top in tops:
            return rank
    raise AssertionError(f"module {module} belongs to no layer: add it to LAYERS in {__file__}")


def imports_of(path: Path, modules: set[str]) -> list[tuple[str, bool, int]]:
    """``(imported protego_nb module, at run time, line)`` for every import statement in ``path``; imports under
    ``if TYPE_CHECKING:`` (annotations only) are not made at run time."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != me:
                out.append((name, id(node) not in typing_only, node.lineno))
    return out


def import_graph() -> tuple[dict[str, list[tuple[str, bool, int]]], dict[str, Path]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    return {m: imports_of(p, modules) for m, p in files.items()}, files


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_layer_and_imports_only_down():
    graph, files = import_graph()
    upward = [
        f"{files[m].relative_to(PKG.parent)}:{line} imports {dep} ({LAYERS[layer_of(dep)][0]}) "
        f"from layer {LAYERS[layer_of(m)][0]}"
        for m, deps in graph.items()
        for dep, _, line in deps
        if layer_of(dep) > layer_of(m)
    ]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    """No cycle among run-time imports, whether at module level or deferred inside a function (a deferred
    import that closes a loop hides a cycle rather than removing it)."""
    graph, _ = import_graph()
    top = {m: {d for d, runtime, _ in deps if runtime} for m, deps in graph.items()}
    # a package's __init__ importing its own submodules is how a package exposes them, not a cycle
    top = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in top.items()}
    cycle = find_cycle(top)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert layer_of("protego_nb.protect.methods.fawkes") > layer_of("protego_nb.models.zoo")
    assert layer_of("protego_nb.study.protections") > layer_of("protego_nb.evaluate.retrieval")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("protego_nb.newthing")
    fake = PKG / "protect" / "methods" / "fawkes.py"
    deps = {d for d, _, _ in imports_of(fake, set(import_graph()[1]))}
    assert "protego_nb.protect.train" in deps and "protego_nb.protect.methods.common" in deps
