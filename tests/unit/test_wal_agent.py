"""The WAL agent's fast path (``backupctl.walpusher`` and ``wal.agent``'s client side).

PostgreSQL starts archive_command once per segment: the fast path must import only the standard library
and its own stdlib-only agent modules, and its settings reader must agree with the config schema on
``[wal]``: same defaults, and the same values accepted and refused (else a value the full loader refuses
would run the fast path with a value nobody checked, or the other way round).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import backupctl
from backupctl.core import config
from backupctl.core.config import WalConfig, parse_config
from backupctl.core.errors import ConfigError
from backupctl.wal.agent import settings
from backupctl.wal.agent.settings import WAL_OPTIONS, wal_options

ROOT = Path(backupctl.__file__).resolve().parent.parent
FAST_PATH_OWN = {"backupctl", "backupctl.wal", "backupctl.wal.agent", "backupctl.wal.agent.client",
                 "backupctl.wal.agent.protocol", "backupctl.wal.agent.settings", "backupctl.walpusher"}


def _imported_by(code: str) -> set[str]:
    """The modules a fresh ``python -I -S`` (as archive_command runs) imports for ``code``."""
    probe = f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"
    run = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", "-c", probe], capture_output=True,
                         text=True, check=True)
    lines = [line.split("|")[-1] for line in run.stderr.splitlines() if line.startswith("import time:")]
    return {line.strip() for line in lines[1:]}  # the first line is the table's header


@pytest.mark.parametrize("code", [
    "import backupctl.walpusher",
    "from backupctl.wal.agent import client, settings; settings.wal_options({'prefetch': 3}); client.say('x')",
])
def test_the_fast_path_imports_only_the_standard_library(code: str) -> None:
    modules = _imported_by(code)
    assert "backupctl.walpusher" in modules or "backupctl.wal.agent.client" in modules
    foreign = {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names and m not in FAST_PATH_OWN}
    assert not foreign, f"the fast path imports {sorted(foreign)}"


def _schema_accepts(key: str, value: Any) -> bool:
    try:
        parse_config({"repository": {"path": "/srv/backups"}, "wal": {key: value}}, Path("/etc/backupctl/b.toml"))
    except ConfigError:
        return False
    return True


def _boundaries(f: dataclasses.Field[Any]) -> list[Any]:
    """Values on and just past each end of an option's range, and values of other types."""
    meta = f.metadata
    step = 1 if isinstance(f.default, int) and not isinstance(f.default, bool) else 0.5
    values: list[Any] = [f.default, True, "text", "", 1.5, 7, -1, 0]
    if "min" in meta:
        values += [meta["min"], meta["min"] - step]
    if "max" in meta:
        values += [meta["max"], meta["max"] + step]
    if meta.get("positive"):
        values += [0, 0.0, 0.001, -0.001]
    return [v for v in values if v is not None]


FIELDS = list(dataclasses.fields(WalConfig))


def test_the_fast_path_finds_the_config_file_where_the_cli_does() -> None:
    assert (settings.DEFAULT_CONFIG, settings.CONFIG_ENV) == (config.DEFAULT_CONFIG, config.CONFIG_ENV)


def test_every_wal_option_is_known_to_the_fast_path() -> None:
    keys = {f.metadata.get("toml", f.name) for f in FIELDS}
    assert keys == set(WAL_OPTIONS)
    assert wal_options({}) == {f.metadata.get("toml", f.name): f.default for f in FIELDS}


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_the_fast_path_accepts_and_refuses_what_the_schema_does(f: dataclasses.Field[Any]) -> None:
    key = f.metadata.get("toml", f.name)
    assert WAL_OPTIONS[key][1] == f.default
    for value in _boundaries(f):
        fast = wal_options({key: value}) is not None
        assert fast == _schema_accepts(key, value), f"[wal] {key} = {value!r}: fast path {fast}, schema not"


@pytest.mark.parametrize("entry", [["-I", "-S", str(ROOT / "backupctl" / "walpusher.py")],
                                   ["-m", "backupctl.walpusher"]], ids=["script", "module"])
def test_walpusher_runs_as_a_script_and_as_a_module(entry: list[str]) -> None:
    """postgresql.conf names the file (or the module): it must start from any directory."""
    run = subprocess.run([sys.executable, *entry, "wal-fetch", "--epoch", "0", "a", "b"], capture_output=True,
                         text=True, cwd="/", env={"PYTHONPATH": str(ROOT)} if "-m" in entry else {})
    assert run.returncode == 128, run.stderr  # a usage error of restore_command must stop recovery
    assert run.stderr.startswith("backupctl: error: --epoch '0' is not a history epoch")
