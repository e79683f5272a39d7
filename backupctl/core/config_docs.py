"""The README's config reference, written from the schema, and the example config, checked against it.

Each option is declared once, in ``core/config.py``; what users read about it must not drift from there.

- ``python -m backupctl.core.config_docs --reference`` prints the reference (Markdown): every table, every
  key with its default, its allowed values and its doc. ``--write-readme`` puts it in README.md between the
  ``config-reference`` markers (``make config-docs``); a unit test fails when the README's copy is stale.
- ``config/backupctl.example.toml`` is written by hand, because its value is its comments and its examples
  (an S3 block, a second source), so it is checked rather than generated (``--check``, and the same unit
  test): every option appears in its table, set or commented out; every key it shows exists and its value is
  valid for the option's type and range; a value it shows is the option's default, unless the option has
  no default (unset, "" or an empty list) or is one of fixed choices; a comment listing choices
  (``"a" | "b"``) lists exactly the option's choices, and a choice marked ``(default)`` is the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backupctl.core.config import SOURCE_KINDS, Config
from backupctl.core.errors import EXIT_FAILED, EXIT_OK, ConfigError
from backupctl.core.options import (
    ConfigPath,
    Duration,
    Loader,
    Size,
    choices,
    describe_range,
    range_problem,
    show,
    toml_name,
    without_none,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = ROOT / "config" / "backupctl.example.toml"
BEGIN = "<!-- config-reference: generated from backupctl/core/config.py by `make config-docs`; edit the schema -->"
END = "<!-- /config-reference -->"
SOURCE_TABLE = "sources.NAME"
STANDBY_TABLE = "standbys.HOSTNAME"  # a source's named sub-tables: [sources.NAME.standbys.HOSTNAME]

_TYPE_WORDS = {str: "string", int: "integer", float: "number", bool: "true/false", Size: "size",
               Duration: "duration", ConfigPath: "path"}


def _table_hint(hint: Any) -> tuple[type, bool] | None:
    """``(class, is_array)`` when a field holds a table or an array of tables, else None."""
    hint = without_none(hint)
    if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        return typing.get_args(hint)[0], True
    if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
        return typing.get_args(hint)[1], False
    if dataclasses.is_dataclass(hint):
        return hint, False
    return None


def tables(cls: type = Config, where: str = "") -> list[tuple[str, type]]:
    """Every table of the file as ``(header, class)``: ``("[wal]", WalConfig)``, ``("[sources.NAME]", ...)``."""
    found: list[tuple[str, type]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{where}.{toml_name(f)}" if where else toml_name(f)
        if cls is Config and typing.get_origin(hints[f.name]) is dict:  # [sources.NAME], one class per kind
            for kind_cls in SOURCE_KINDS.values():
                found.append((f"[{SOURCE_TABLE}]", kind_cls))
                found.extend(tables(kind_cls, SOURCE_TABLE))
        elif typing.get_origin(hints[f.name]) is dict and (table := _table_hint(hints[f.name])) is not None:
            found.append((f"[{where}.{STANDBY_TABLE}]", table[0]))
        elif (table := _table_hint(hints[f.name])) is not None:
            found.append((f"[[{key}]]" if table[1] else f"[{key}]", table[0]))
            found.extend(tables(table[0], key))
    return list(dict.fromkeys(found))


def options(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    """The keys of one table as ``(field, type hint)``: neither sub-tables nor the fields the loader fills."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("from_loader") and _table_hint(hints[f.name]) is None:
            yield f, hints[f.name]


def _type_word(hint: Any) -> str:
    hint = without_none(hint)
    if typing.get_origin(hint) is list:
        return f"list of {_type_word(typing.get_args(hint)[0])}s"
    return _TYPE_WORDS[hint]


def _default(f: dataclasses.Field[Any], hint: Any) -> str:
    if f.default_factory is not dataclasses.MISSING:
        return "`[]`"
    if f.default is dataclasses.MISSING:
        return "required"
    return "unset" if f.default is None else f"`{show(hint, f.default)}`"


def reference() -> str:
    """The README's config reference: one Markdown table per TOML table."""
    lines = ["Every key of the config file, from the schema in `backupctl/core/config.py`; "
             "[`config/backupctl.example.toml`](config/backupctl.example.toml) shows them in use. "
             'Sizes are written as `"16MiB"`, `"1GB"` or a number of bytes; durations as `"90s"`, `"15m"`, `"26h"`, '
             '`"7d"`, `"2w"`; relative paths are relative to the config file. An unset key has no value, '
             "and its doc says what that means."]
    for header, cls in tables():
        title, _, about = (cls.__doc__ or "").strip().splitlines()[0].partition(": ")
        lines += ["", f"### `{header}`{title.removeprefix(header)}", "", about[:1].upper() + about[1:], "",
                  "| key | default | allowed | |", "|---|---|---|---|"]
        for f, hint in options(cls):
            allowed = _type_word(hint) if not choices(hint) else ""
            limits = describe_range(f, hint)
            allowed = ", ".join(part for part in (allowed, limits) if part).replace("|", "\\|")
            lines.append(f"| `{toml_name(f)}` | {_default(f, hint)} | {allowed} | {f.metadata['doc']} |")
    return "\n".join(lines) + "\n"


def readme_with_reference(readme: str) -> str:
    """The README with its reference block replaced by today's."""
    if BEGIN not in readme or END not in readme:
        raise ConfigError(f"README.md has no {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN, 1)
    return f"{head}{BEGIN}\n\n{reference()}\n{END}{rest.split(END, 1)[1]}"


def _header_of(line: str) -> str | None:
    """The table a line opens (also commented out, ``# [metrics]``), with a source's name made ``NAME``."""
    match = re.fullmatch(r"#?\s*(\[\[?)([A-Za-z0-9_.-]+)(\]\]?)\s*(#.*)?", line.strip())
    if match is None:
        return None
    name = re.sub(r"^sources\.[^.]+", SOURCE_TABLE, match.group(2))
    name = re.sub(r"\.standbys\.[^.]+$", f".{STANDBY_TABLE}", name)
    return f"{match.group(1)}{name}{match.group(3)}"


def _entry(line: str) -> tuple[str, Any, str] | None:
    """``(key, value, comment)`` of a ``key = value  # comment`` line, set or commented out; None for prose."""
    match = re.fullmatch(r"#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line.strip())
    if match is None:
        return None
    rest = match.group(2)
    for cut in [i for i, char in enumerate(rest) if char == "#"] + [len(rest)]:
        try:
            value = tomllib.loads(f"v = {rest[:cut]}")["v"]
        except tomllib.TOMLDecodeError:
            continue
        return match.group(1), value, rest[cut + 1:]
    return None


def _example_tables(text: str) -> list[tuple[str, list[tuple[int, str, Any, str]]]]:
    """The example's tables in order, each with its ``(line number, key, value, comment)`` entries."""
    found: list[tuple[str, list[tuple[int, str, Any, str]]]] = [("", [])]
    for number, line in enumerate(text.splitlines(), 1):
        header = _header_of(line)
        if header is not None:
            found.append((header, []))
        elif (entry := _entry(line)) is not None:
            found[-1][1].append((number, *entry))
    return found


def _class_of(header: str, entries: list[tuple[int, str, Any, str]]) -> type | None:
    if header == f"[{SOURCE_TABLE}]":
        return next((SOURCE_KINDS.get(value) for _, key, value, _ in entries if key == "kind"), None)
    return dict(tables()).get(header)


def _entry_problem(f: dataclasses.Field[Any], hint: Any, value: Any, comment: str) -> str | None:
    """What is wrong with one shown value and its comment, by the option's type, range, default and choices."""
    try:
        converted = Loader(EXAMPLE).convert(hint, value, toml_name(f))
    except ConfigError as exc:
        return str(exc).split(": ", 1)[1]
    problem = range_problem(f, hint, converted)
    if problem:
        return problem
    quoted = re.findall(r'"([^"]*)"', comment)
    if " | " in comment and choices(hint) and set(quoted) != set(choices(hint)):
        return f"its comment lists {sorted(set(quoted))}, the schema allows {sorted(choices(hint))}"
    marked = re.search(r'"([^"]*)" \(default\)', comment)
    if marked and marked.group(1) != f.default:
        return f"its comment marks {marked.group(1)!r} as the default, the schema's is {f.default!r}"
    has_default = f.default not in (dataclasses.MISSING, None, "") and not choices(hint)
    if has_default and converted != f.default:
        return f"shows {show(hint, converted)}, but the default is {show(hint, f.default)}"
    return None


def example_problems(text: str) -> list[str]:
    """Where the example config disagrees with the schema (the module's docstring lists the rules)."""
    problems: list[str] = []
    shown: set[tuple[str, type, str]] = set()
    for header, entries in _example_tables(text)[1:]:
        cls = _class_of(header, entries)
        if cls is None:
            problems.append(f"{header}: not a table of the schema (or a source without kind)")
            continue
        fields = {toml_name(f): (f, hint) for f, hint in options(cls)}
        for number, key, value, comment in entries:
            if key not in fields:
                problems.append(f"line {number}: {header} {key} is not an option of {header}")
                continue
            problem = _entry_problem(*fields[key], value, comment)
            if problem:
                problems.append(f"line {number}: {header} {key} {problem}")
            shown.add((header, cls, key))
    for header, cls in tables():
        for f, _hint in options(cls):
            if (header, cls, toml_name(f)) not in shown:
                problems.append(f"{header} {toml_name(f)} ({cls.__name__}) is missing from the example")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backupctl.core.config_docs", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--reference", action="store_true", help="print the README's config reference")
    action.add_argument("--write-readme", action="store_true", help="write the reference into README.md")
    action.add_argument("--check", action="store_true", help="check README.md and the example against the schema")
    args = parser.parse_args(argv)
    if args.reference:
        sys.stdout.write(reference())
        return EXIT_OK
    readme = README.read_text()
    if args.write_readme:
        README.write_text(readme_with_reference(readme))
        return EXIT_OK
    problems = example_problems(EXAMPLE.read_text())
    if readme_with_reference(readme) != readme:
        problems.append("README.md: the config reference is stale (run `make config-docs`)")
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
