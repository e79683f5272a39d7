"""How a config option is declared, the value types it can have, and the loader that checks them.

``core/config.py`` is the schema: one dataclass per table, one field per option. This module is the machinery
under it, kept apart so that the schema reads as a list of options: ``option()`` declares a field with its
default, its allowed range and a one-line doc; ``Loader`` turns TOML tables into the frozen dataclasses,
checking types, ``Literal`` choices and every range from the field's metadata, and naming the dotted key on
any mismatch.

A field's metadata (``dataclasses.fields(cls)[i].metadata``; read by the loader, by ``config_docs`` for the
README's reference and the example's check, and by the WAL fast path's parity test) has these keys, each
present only when set:

``doc``       one line: what the option does (every option has one)
``min``       the smallest allowed value, inclusive (bytes for a size, seconds for a duration)
``max``       the largest allowed value, inclusive
``positive``  True: the value must be above 0
``why``       a parenthetical added to the range error, e.g. "S3's smallest part"
``range_by``  ``(sibling, {choice: (min, max, why or None) or None})``: a range that depends on the value of
              another option of the same table (a compressor's level on its algorithm); None for a choice
              the option does not apply to
``check``     ``f(value) -> problem | None`` for a format a type cannot say (a cron expression, a time zone)
``toml``      the key in the file, when a Python keyword forced another field name (``async_``)
``from_loader`` True on the fields the loader fills itself (``Config.file``, a source's ``name``)

An option's choices are not metadata: they are its ``Literal[...]`` type, which ``choices()`` reads.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from backupctl.core.errors import ConfigError
from backupctl.core.units import format_duration, format_size

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Size(int):
    """A byte count, written in the file as an integer or a string such as "16MiB"."""


class ConfigPath(str):
    """A filesystem path; relative ones are resolved against the config file's directory."""


class Duration(float):
    """A span of time in seconds, written in the file as a string such as "90s", "15m", "26h", "7d", "2w"."""


def parse_duration(text: str) -> float:
    """Parse "15m", "26h", "7d", "1d12h" into seconds; raise ValueError with the accepted forms."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    if not parts or re.sub(r"[\d.\s]+[smhdw]", "", text.strip().lower()):
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 15m, 26h, 7d, 2w)")
    return float(sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts))


def parse_size(text: str) -> int:
    """Parse "16MiB", "1.5GB", "4096" into bytes; raise ValueError with the accepted forms."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (use e.g. 16MiB, 512KiB, 1GB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


RangeBy = tuple[str, dict[str, tuple[float, float, str | None] | None]]


def option(default: Any = dataclasses.MISSING, *, doc: str, factory: Callable[[], Any] | None = None,
           min: float | None = None, max: float | None = None, positive: bool = False,
           why: str | None = None, check: Callable[[Any], str | None] | None = None,
           toml: str | None = None, range_by: RangeBy | None = None) -> Any:
    """A schema field: its default (or ``factory``), its range and its doc, as the metadata keys above."""
    given = {"doc": doc, "min": min, "max": max, "positive": positive or None, "why": why, "check": check,
             "toml": toml, "range_by": range_by}
    metadata = {key: value for key, value in given.items() if value is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


FROM_LOADER = {"from_loader": True}  # metadata of a field the loader fills itself, not a key of the file


def toml_name(f: dataclasses.Field[Any]) -> str:
    """The key a field has in the file: its name, unless a Python keyword forced another (``async_``)."""
    return f.metadata.get("toml", f.name)


def without_none(hint: Any) -> Any:
    """``X | None`` -> ``X``: the type an optional option has when it is set."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def choices(hint: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` option allows (``()`` for any other type)."""
    hint = without_none(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def show(hint: Any, value: Any) -> str:
    """A value as a user writes it: sizes and durations in units, strings quoted, TOML's true/false."""
    hint = without_none(hint)
    if value is None:
        return "unset"
    if hint is Size:
        return f'"{format_size(value)}"'
    if hint is Duration:
        return f'"{format_duration(value)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _bound(hint: Any, value: float) -> str:
    """A range's end in an error message: 5MiB, 2s, 64."""
    hint = without_none(hint)
    if hint is Size:
        return format_size(int(value))
    if hint is Duration:
        return format_duration(value)
    return f"{value:g}"


def range_problem(f: dataclasses.Field[Any], hint: Any, value: Any,
                  table: dict[str, Any] | None = None) -> str | None:
    """What is wrong with an option's value by its metadata (range, ``check``), or None; unset is fine.
    ``table`` (every option of the table, set or default) is needed for a ``range_by`` range."""
    meta = f.metadata
    low, high = meta.get("min"), meta.get("max")
    if value is None:
        return None
    if "range_by" in meta and table is not None:
        sibling, ranges = meta["range_by"]
        on = table[sibling]
        if ranges.get(on) is None:
            return f"does not apply to {sibling} {show(str, on)}: remove it"
        low, high, why = ranges[on]  # type: ignore[misc]
        if not low <= value <= high:
            return f"must be between {_bound(hint, low)} and {_bound(hint, high)} for {sibling} {show(str, on)}" + \
                (f" ({why})" if why else "")
    if meta.get("positive") and value <= 0:
        problem = "must be a positive duration" if without_none(hint) is Duration else "must be positive"
    elif low is not None and high is not None and not low <= value <= high:
        problem = f"must be between {_bound(hint, low)} and {_bound(hint, high)}"
    elif low is not None and value < low:
        problem = "must be 0 or more" if low == 0 else f"must be at least {_bound(hint, low)}"
    elif high is not None and value > high:
        problem = f"must be at most {_bound(hint, high)}"
    else:
        return meta["check"](value) if "check" in meta else None
    return f"{problem} ({meta['why']})" if "why" in meta else problem


def describe_range(f: dataclasses.Field[Any], hint: Any) -> str:
    """The allowed values of an option in words, for the README's reference ("" when any value of its type)."""
    meta = f.metadata
    if choices(hint):
        return " | ".join(f"`{show(hint, choice)}`" for choice in choices(hint))
    if "range_by" in meta:
        _sibling, ranges = meta["range_by"]
        return ", ".join(f"{on}: {_bound(hint, bounds[0])} to {_bound(hint, bounds[1])}"
                         for on, bounds in ranges.items() if bounds is not None)
    if meta.get("positive"):
        return "> 0"
    if "min" in meta and "max" in meta:
        return f"{_bound(hint, meta['min'])} to {_bound(hint, meta['max'])}"
    if "min" in meta:
        return f">= {_bound(hint, meta['min'])}"
    return f"<= {_bound(hint, meta['max'])}" if "max" in meta else ""


def join_key(where: str, key: str) -> str:
    """A dotted key: ``sources.main`` + ``check`` -> ``sources.main.check``."""
    return f"{where}.{key}" if where else key


class Loader:
    """Turns TOML tables into frozen dataclasses, naming the exact key on any mismatch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key} {problem}")

    def build(self, cls: type, table: dict[str, Any], where: str) -> Any:
        hints = typing.get_type_hints(cls)
        names = {toml_name(f) for f in dataclasses.fields(cls)}
        for key in table:
            if key not in names:
                raise self.error(join_key(where, key), f"is not a known setting (allowed: {allowed(cls)})")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = join_key(where, toml_name(f))
            if toml_name(f) in table:
                values[f.name] = self.convert(hints[f.name], table[toml_name(f)], key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise self.error(key, "is required")
        complete = {f.name: values.get(f.name, f.default) for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if f.name in values:
                problem = range_problem(f, hints[f.name], values[f.name], complete)
                if problem:
                    raise self.error(join_key(where, toml_name(f)), problem)
        return cls(**values)

    def convert(self, hint: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return self.convert(inner, value, key)
        if origin is Literal:
            if value not in args:
                raise self.error(key, f"must be one of {', '.join(repr(a) for a in args)}, not {value!r}")
            return value
        if origin is dict:  # named tables: [sources.NAME.standbys.HOSTNAME]
            if not isinstance(value, dict):
                raise self.error(key, f"must be a table of named tables, not {_kind(value)}")
            return {name: self.convert(args[1], item, f"{key}.{name}") for name, item in value.items()}
        if origin is list:
            if not isinstance(value, list):
                raise self.error(key, f"must be a list, not {_kind(value)}")
            return [self.convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise self.error(key, f"must be a table, not {_kind(value)}")
            return self.build(hint, value, key)
        return self.scalar(hint, value, key)

    def scalar(self, hint: Any, value: Any, key: str) -> Any:
        if hint is Path:
            return value
        if hint is Size:
            if isinstance(value, int) and not isinstance(value, bool):
                return Size(value)
            if isinstance(value, str):
                try:
                    return Size(parse_size(value))
                except ValueError as exc:
                    raise self.error(key, str(exc)) from exc
            raise self.error(key, f"must be a size such as \"16MiB\", not {_kind(value)}")
        if hint is Duration:
            if not isinstance(value, str):
                raise self.error(key, f"must be a duration such as \"26h\", not {_kind(value)}")
            try:
                return Duration(parse_duration(value))
            except ValueError as exc:
                raise self.error(key, str(exc)) from exc
        if hint is ConfigPath:
            if not isinstance(value, str) or not value:
                raise self.error(key, f"must be a path string, not {_kind(value)}")
            resolved = Path(value).expanduser()
            if not resolved.is_absolute():
                resolved = self.path.parent.resolve() / resolved
            return ConfigPath(resolved)
        expected = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}[hint]
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise self.error(key, f"must be {expected}, not {_kind(value)}")
        return value


def allowed(cls: type) -> str:
    """The keys a table accepts, for an unknown-key error (a source's ``kind`` has its own)."""
    return ", ".join(toml_name(f) for f in dataclasses.fields(cls)
                     if f.name != "kind" and not f.metadata.get("from_loader"))


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)
