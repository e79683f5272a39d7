"""Sizes as the config writes them, and the configs shipped in config/ (the example and the demo's) load."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupctl.core.config import load_config
from backupctl.core.options import parse_size


def test_sizes() -> None:
    assert parse_size("16MiB") == 16 * 2**20 and parse_size("1.5GB") == 1_500_000_000
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("12 parsecs")


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "config"
    example = load_config(root / "backupctl.example.toml")
    assert set(example.sources) == {"devdb", "main"} and example.sources["main"].kind == "postgres"
    dev = load_config(root / "dev.toml")
    assert dev.repository.type == "local" and dev.sources["devdb"].kind == "sqlite"
