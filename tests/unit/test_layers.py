"""The layers of docs/architecture.md, enforced: imports point down, and no module imports itself back.

Each package of ``backupctl`` is a layer; a module may import its own package and the packages below it,
never one above (a lower layer that needs something from above is a sign the thing lives in the wrong
place). The entry points at the top level (the console script, ``python -m backupctl``, the demo and the
``walpusher`` shim that postgresql.conf names) may import anything. Function-level imports count too: they
hid the two cycles this test was written against, so the graph below includes them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import backupctl

PACKAGE = Path(backupctl.__file__).parent
LAYERS = ["cli", "scheduler", "monitoring", "services", "engines", "wal", "postgres", "repo", "storage", "core"]
ENTRY_POINTS = {"backupctl.console", "backupctl.__main__", "backupctl.demo", "backupctl.walpusher", "backupctl"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, modules: set[str]) -> set[str]:
    """The backupctl modules an AST imports (``from backupctl.x import y`` counts y when y is a module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("backupctl"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("backupctl"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imported_modules(ast.parse(path.read_text()), modules) - {name} for name, path in paths.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, imports in sorted(import_graph().items()):
        own = layer(module)
        if module in ENTRY_POINTS or own is None:
            continue
        upward += [f"{module} -> {target}" for target in sorted(imports)
                   if (theirs := layer(target)) is not None and theirs < own]
        entries = imports & ENTRY_POINTS - {"backupctl"}
        upward += [f"{module} -> {target} (an entry point)" for target in sorted(entries)]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if target == "backupctl":  # the package root holds only __version__
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert [" -> ".join(cycle) for cycle in cycles] == []
