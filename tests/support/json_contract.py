"""The JSON contract of docs/json-output.md, read from its field tables, and a check of a document against it.

Each table is headed by a line ``**`PATH`**``: the command (``status``, ``drill run``, ``restore --plan``)
followed by the steps to the object it describes (``[]`` each element of a list, ``.name`` a field), e.g.
``status[].backups[]``. A field whose type says *optional* may be absent; every other field must be present,
and a field the table does not name must not be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "json-output.md"
_HEADING = re.compile(r"^\*\*`([^`]+)`\*\*")
_PATH = re.compile(r"^([a-z][a-z -]*?)((?:\[\]|\.[a-z_]+)*)$")
_STEP = re.compile(r"\[\]|\.([a-z_]+)")


@dataclass(frozen=True)
class Table:
    """One documented object: its fields, and which of them may be absent."""

    command: str
    steps: tuple[str, ...]  # "[]" or a field name, from the command's document to the object
    fields: tuple[str, ...]
    optional: frozenset[str]


def tables(doc: Path = DOC) -> dict[str, Table]:
    """Every field table of the document, by its path."""
    found: dict[str, Table] = {}
    lines = doc.read_text().splitlines()
    for i, line in enumerate(lines):
        heading = _HEADING.match(line)
        if not heading:
            continue
        path = heading.group(1)
        match = _PATH.match(path)
        assert match, f"{path!r} is not a path like `status[].wal`"
        rows = _rows(lines[i + 1:])
        assert rows, f"no field table under {path}"
        assert path not in found, f"{path} is documented twice"
        steps = tuple(m.group(1) or "[]" for m in _STEP.finditer(match.group(2)))
        found[path] = Table(match.group(1), steps, tuple(name for name, _ in rows),
                            frozenset(name for name, kind in rows if "optional" in kind))
    return found


def _rows(lines: list[str]) -> list[tuple[str, str]]:
    """(field, type) of the first table in ``lines``, skipping its header and rule."""
    rows: list[tuple[str, str]] = []
    for line in lines:
        if not line.startswith("|"):
            if rows or _HEADING.match(line):
                break
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in ("Field", "---") or set(cells[0]) <= {"-"}:
            continue
        rows.append((cells[0], cells[1]))
    return rows


def _objects(document: Any, steps: tuple[str, ...]) -> list[dict[str, Any]]:
    """The objects at ``steps`` inside ``document`` (none where a step meets null or an absent field)."""
    values = [document]
    for step in steps:
        inside = (value if step == "[]" else [value.get(step)] for value in values)
        values = [item for items in inside for item in items if item is not None]
    for value in values:
        assert isinstance(value, dict), f"expected an object, got {value!r}"
    return values


def check(command: str, document: Any, extra: dict[str, Table] | None = None) -> int:
    """Assert ``document`` (what ``command`` printed) has exactly the documented fields in every documented
    object; returns how many objects were checked. ``extra`` adds optional fields to tables by path."""
    checked = 0
    for path, table in tables().items():
        if table.command != command:
            continue
        allowed = set(table.fields) | set((extra or {}).get(path, Table("", (), (), frozenset())).fields)
        required = set(table.fields) - table.optional
        for obj in _objects(document, table.steps):
            undocumented = set(obj) - allowed
            missing = required - set(obj)
            assert not undocumented, f"{path}: fields not in docs/json-output.md: {sorted(undocumented)}"
            assert not missing, f"{path}: documented fields missing: {sorted(missing)}"
            checked += 1
    assert checked, f"nothing of {command} was checked: is it documented?"
    return checked
