"""Every function-level import says why it is not at the top of its module.

Imports belong at the top; one inside a function is there only for start-up cost (the CLI loads a verb's
services when that verb runs, the WAL fast path loads nothing beyond the standard library, a heavy library
such as boto3 or psycopg loads only on the path that needs it). The reason is written next to it: a comment
on the import's line or on the line above its group of imports, or, for a module with many such imports, one
sentence in the module's docstring containing ``STARTUP_RULE``. An import cycle is not a reason: it means
some code lives in the wrong module (tests/unit/test_layers.py forbids cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import backupctl

PACKAGE = Path(backupctl.__file__).parent
STARTUP_RULE = "imported where they are used: start-up cost"


def _groups(tree: ast.AST) -> list[list[ast.Import | ast.ImportFrom]]:
    """Function-level imports, as runs of adjacent import statements in one body."""
    groups: list[list[ast.Import | ast.ImportFrom]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            previous: ast.stmt | None = None
            for statement in block:
                if in_function and isinstance(statement, ast.Import | ast.ImportFrom):
                    adjacent = isinstance(previous, ast.Import | ast.ImportFrom) and \
                        statement.lineno == previous.end_lineno + 1  # type: ignore[operator]
                    if adjacent:
                        groups[-1].append(statement)
                    else:
                        groups.append([statement])
                previous = statement
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return groups


def unexplained_lines(source: str) -> list[int]:
    """The line of each function-level import in ``source`` that no comment or docstring explains."""
    tree = ast.parse(source)
    if STARTUP_RULE in " ".join((ast.get_docstring(tree) or "").split()):  # the phrase may wrap
        return []
    lines = source.splitlines()
    found = []
    for group in _groups(tree):
        above = lines[group[0].lineno - 2].strip() if group[0].lineno > 1 else ""
        text = lines[group[0].lineno - 1:group[-1].end_lineno]
        if not above.startswith("#") and not any("#" in line for line in text):
            found += [node.lineno for node in group]
    return found


def test_every_function_level_import_says_why() -> None:
    unexplained = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
                   for line in unexplained_lines(path.read_text())]
    assert not unexplained, "function-level imports without a reason:\n" + "\n".join(unexplained)


def test_the_checker_sees_a_bare_import_and_accepts_a_commented_group() -> None:
    source = ("def a():\n    import json\n\n"
              "def b():\n    # start-up cost\n    import json\n    import os\n\n"
              "def c():\n    import json  # start-up cost\n    from os import (\n        path,\n    )\n")
    assert [[node.lineno for node in group] for group in _groups(ast.parse(source))] == [[2], [6, 7], [10, 11]]
    assert unexplained_lines(source) == [2]
    assert unexplained_lines(f'"""Modules are {STARTUP_RULE}."""\n\ndef a():\n    import json\n') == []
    assert unexplained_lines("import json\n\nclass A:\n    def f(self):\n        import os\n") == [5]
