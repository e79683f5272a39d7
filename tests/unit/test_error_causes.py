"""Errors keep their cause: ``raise X from None`` hides the OS, botocore, psycopg or subprocess error behind
a BackupctlError from ``--debug`` too, so it is allowed only with a comment on its line saying why the cause
is noise."""

from __future__ import annotations

import ast
from pathlib import Path

import backupctl

PACKAGE = Path(backupctl.__file__).parent


def test_from_none_only_with_a_reason() -> None:
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant) and node.cause.value is None:
                end = lines[(node.end_lineno or node.lineno) - 1]
                if "#" not in end.split("from None", 1)[-1]:
                    unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert unexplained == [], "raise ... from None without a comment saying why the cause is noise"
