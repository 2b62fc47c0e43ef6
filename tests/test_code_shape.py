"""The package's shape: no import cycle and no import up the layers (lazy imports included), and no function
longer than a screen."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "llm_surgeon"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in SRC.rglob("*.py")}


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Every llm_surgeon module ``name`` imports, anywhere in the file (function-level imports count).

    Importing ``a.b.c`` also runs the ``__init__`` of ``a.b``, except from inside ``a.b`` itself (a
    submodule is always loaded through its own package). The root package's ``__init__`` (the public
    facade that imports the API) is left out, or every module would be in a cycle with it.
    """
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                prefix = ".".join(parts[:i])
                inside = name.startswith(prefix + ".") and prefix != target
                if prefix in known and prefix != name and not inside:
                    found.add(prefix)
    return found


def test_no_import_cycle_in_the_package():
    modules = _modules()
    graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
    assert "llm_surgeon.engine.pruner" in graph and graph["llm_surgeon.engine.pruner"]  # the walk sees real edges
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


LAYERS = [
    {"errors", "_version"},
    {"math", "runtime"},
    {"data"},
    {"models"},
    {"curvature"},
    {"methods"},
    {"config"},
    {"engine", "healing"},
    {"evaluation", "gguf"},
    {"planning"},
    {"artifacts"},
    {"api", "bench", "deploy"},
    {"cli"},
    {"__main__"},
]
"""The package's layers, lowest first: a module may import its own layer and those below, never one above.
The root ``__init__`` (the public facade) is outside the layers."""
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str | None:
    """The top-level subpackage or module of ``llm_surgeon`` that ``module`` belongs to (None: the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(name) for name in _modules()} - {None}
    assert parts <= set(RANK), f"give these a layer in LAYERS: {sorted(parts - set(RANK))}"


def test_no_module_imports_a_higher_layer():
    modules = _modules()
    edges = {(name, target) for name, tree in modules.items() for target in _imports(name, tree, set(modules))
             if _part(name) in RANK and _part(target) in RANK}
    assert ("llm_surgeon.api", "llm_surgeon.engine.pruner") in edges  # the walk sees real edges
    upward = sorted(f"{name} -> {target}" for name, target in edges if RANK[_part(target)] > RANK[_part(name)])
    assert not upward, "imports up the layers: " + "; ".join(upward)


def test_no_function_longer_than_a_screen():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, "functions over 60 lines: " + ", ".join(long)
