"""The config schema: every option declared once, with its doc and range, and checked from that metadata."""

from __future__ import annotations

import dataclasses
import random
import typing
from pathlib import Path
from typing import Any

import lz4.frame
import pyrage
import pytest
import zstandard
from pyrage import x25519

from backupctl.core.age_format import is_age_recipient
from backupctl.core.config import CompressionConfig, Config, SqliteSource, parse_config
from backupctl.core.config_docs import EXAMPLE, README, example_problems, options, readme_with_reference, tables
from backupctl.core.errors import ConfigError
from backupctl.core.options import choices, range_problem
from backupctl.repo.codecs import codec

FILE = Path("/etc/backupctl/backupctl.toml")
BASE: dict[str, Any] = {"repository": {"type": "local", "path": "/srv/repo"}}
SQLITE: dict[str, Any] = {"kind": "sqlite", "path": "/srv/app.sqlite3"}


def test_every_option_has_a_doc_and_a_valid_default() -> None:
    """A field the file can set has a one-line doc, and its default passes its own range."""
    for _header, cls in tables():
        hints = typing.get_type_hints(cls)
        for f, hint in options(cls):
            assert f.metadata.get("doc") and "\n" not in f.metadata["doc"], f"{cls.__name__}.{f.name}"
            if f.default is not dataclasses.MISSING:
                assert range_problem(f, hints[f.name], f.default) is None, f"{cls.__name__}.{f.name}"
                if choices(hint):
                    assert f.default is None or f.default in choices(hint)


def test_the_loader_fills_only_the_file_and_source_names() -> None:
    filled = {(cls.__name__, f.name) for cls in (Config, *(cls for _header, cls in tables()))
              for f in dataclasses.fields(cls) if f.metadata.get("from_loader")}
    assert filled == {("Config", "file"), ("SqliteSource", "name"), ("PostgresSource", "name")}


def test_each_table_says_its_header_first() -> None:
    """The reference titles each table by its class docstring: it must name the header the schema gives it."""
    for header, cls in tables():
        assert (cls.__doc__ or "").startswith(f"{header}: ") or (cls.__doc__ or "").startswith(f"{header} with kind = ")


def test_readme_reference_is_current() -> None:
    readme = README.read_text()
    assert readme_with_reference(readme) == readme, "README's config reference is stale: run `make config-docs`"


def test_example_config_shows_every_option_as_the_schema_says() -> None:
    assert example_problems(EXAMPLE.read_text()) == []


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("# lease_ttl = ", "# lease_tll = "), "[repository] lease_tll is not an option of [repository]"),
        (("# lease_ttl = ", "# lease_tll = "), "[repository] lease_ttl (RepositoryConfig) is missing"),
        (("# timeout = 60 ", "# timeout = 30 "), "[wal] timeout shows 30.0, but the default is 60.0"),
        (("prefetch = 8 ", "prefetch = 65 "), "[wal] prefetch must be between 0 and 64"),
        (('"auto" | "path" | "virtual"', '"auto" | "path"'), "addressing_style its comment lists"),
        (("[sources.main.drill]", "[sources.main.drll]"), "[sources.NAME.drll]: not a table of the schema"),
    ],
)
def test_example_check_catches_drift(edit: tuple[str, str], problem: str) -> None:
    text = EXAMPLE.read_text()
    assert edit[0] in text
    assert any(problem in found for found in example_problems(text.replace(*edit, 1)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"repository": {**BASE["repository"], "upload_jobs": 0}}, "repository.upload_jobs must be at least 1"),
        ({"repository": {**BASE["repository"], "lease_ttl": "1s"}},
         "repository.lease_ttl must be at least 2s (holders renew every quarter of it)"),
        ({"repository": {**BASE["repository"], "part_size": "1MiB"}},
         "repository.part_size must be at least 5MiB (S3's smallest part)"),
        ({**BASE, "wal": {"push_jobs": 65}}, "wal.push_jobs must be between 1 and 64"),
        ({**BASE, "wal": {"prefetch": 100}}, "wal.prefetch must be between 0 and 64"),
        ({**BASE, "wal": {"idle_exit": 0}}, "wal.idle_exit must be positive"),
        ({**BASE, "metrics": {"refresh": "5s"}}, "metrics.refresh must be at least 10s"),
        ({**BASE, "metrics": {"listen": "9188"}}, "metrics.listen '9188' must be HOST:PORT"),
        ({**BASE, "webhooks": [{"url": "ftp://x"}]}, "webhooks[0].url 'ftp://x' must be an http:// or https:// URL"),
        ({**BASE, "scheduler": {"timezone": "Mars/Olympus"}}, "scheduler.timezone 'Mars/Olympus' is not a time zone"),
        ({**BASE, "sources": {"a": {**SQLITE, "retention": {"keep_daily": -1}}}},
         "sources.a.retention.keep_daily must be 0 or more"),
        ({**BASE, "sources": {"a": {**SQLITE, "retention": {"keep_within": "0s"}}}},
         "sources.a.retention.keep_within must be a positive duration (e.g. 7d)"),
        ({**BASE, "sources": {"a": {**SQLITE, "retention": {"recovery_window": "7d"}}}},
         "sources.a.retention.recovery_window applies to PostgreSQL sources"),
        ({**BASE, "sources": {"a": {**SQLITE, "schedule": {"backup": "1 2 3"}}}},
         "sources.a.schedule.backup '1 2 3' is not a cron expression"),
        ({**BASE, "sources": {"a": {**SQLITE, "schedule": {"full": "0 2 * * 0"}}}},
         "sources.a.schedule.full does not apply to a sqlite source"),
        ({**BASE, "sources": {"a": {**SQLITE, "check": {"ready_warning": 200}}}},
         "sources.a.check.ready_warning must not exceed ready_critical"),
        ({**BASE, "sources": {"a": {**SQLITE, "drill": {"timeout": "0s"}}}},
         "sources.a.drill.timeout must be a positive duration (e.g. 1h)"),
        ({**BASE, "sources": {"a": {"kind": "postgres", "split_size": "1KiB"}}},
         "sources.a.split_size must be at least 1MiB"),
        ({**BASE, "compression": {"level": 99}},
         'compression.level must be between 1 and 19 for algorithm "zstd" (20-22 need far more memory'),
        ({**BASE, "compression": {"algorithm": "gzip", "level": -5}},
         'compression.level must be between 1 and 9 for algorithm "gzip"'),
        ({**BASE, "compression": {"algorithm": "lz4", "level": 17}},
         'compression.level must be between 0 and 16 for algorithm "lz4"'),
        ({**BASE, "compression": {"algorithm": "none", "level": 3}},
         'compression.level does not apply to algorithm "none": remove it'),
        ({**BASE, "encryption": {"recipients": []}}, "encryption.recipients needs at least one age recipient"),
        ({**BASE, "encryption": {"recipients": ["age1nope"]}},
         "encryption.recipients: 'age1nope' is not an age X25519 recipient (age1...)"),
    ],
)
def test_range_and_rule_errors_name_the_dotted_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, FILE)
    assert str(caught.value).startswith(f"{FILE}: {message}")


def test_values_at_the_bounds_load() -> None:
    config = parse_config({"repository": {**BASE["repository"], "part_size": "5MiB", "lease_ttl": "2s"},
                           "wal": {"push_jobs": 64, "prefetch": 0}, "metrics": {"refresh": "10s"},
                           "sources": {"a": {**SQLITE, "retention": {"keep_last": 0}}}}, FILE)
    assert config.wal.prefetch == 0 and config.repository.lease_ttl == 2
    assert isinstance(config.sources["a"], SqliteSource) and isinstance(config, Config)


def _pyrage_accepts(text: str) -> bool:
    try:
        x25519.Recipient.from_str(text.strip())
    except pyrage.RecipientError:
        return False
    return True


def test_age_recipient_format_agrees_with_pyrage() -> None:
    """core checks the format without pyrage (core is the lowest layer); both must judge alike."""
    rng = random.Random(13)
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    for _ in range(50):
        key = str(x25519.Identity.generate().to_public())
        at = rng.randrange(4, len(key))
        candidates = [key, key.upper(), f" {key}\n", key[:-1], key + "q", key[:9] + key[9:].upper(),
                      key.replace("age1", "agf1"), key[:at] + rng.choice(charset) + key[at + 1:],
                      key[:at] + key[at + 1:], "age1", "", "AGE-SECRET-KEY-1" + key[4:]]
        for text in candidates:
            assert is_age_recipient(text) == _pyrage_accepts(text), text


def test_each_compression_levels_range_is_what_its_library_compresses_with() -> None:
    """The schema's ends of each algorithm's level range compress and read back, and lie within the library's."""
    level = next(f for f in dataclasses.fields(CompressionConfig) if f.name == "level")
    _sibling, ranges = level.metadata["range_by"]
    assert ranges["zstd"][1] < zstandard.MAX_COMPRESSION_LEVEL and ranges["lz4"][1] == lz4.frame.COMPRESSIONLEVEL_MAX
    data = bytes(random.Random(1).randbytes(4096)) * 8
    for name, bounds in ranges.items():
        if bounds is None:
            continue
        for value in bounds[:2]:
            parse_config({**BASE, "compression": {"algorithm": name, "level": value}}, FILE)
            chosen = codec(name, int(value))
            compressor = chosen.compressor()
            stored = compressor.compress(data) + compressor.flush()
            assert chosen.decompressor().decompress(stored) == data, (name, value)
