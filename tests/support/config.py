"""Config files for tests: nested dicts written as TOML, and the one-SQLite-source config most tests use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.backends import Backend
from tests.support.cli import CliRunner, run_cli


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, document: dict[str, Any]) -> Path:
    """Write nested dicts as TOML tables (enough for backupctl configs)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix and (scalars or not table):
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for key, value in table.items():
            if isinstance(value, dict):
                emit(f"{prefix}.{key}" if prefix else key, value)

    emit("", document)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_config(
    tmp_path: Path,
    backend: Backend,
    *,
    compression: str = "zstd",
    encrypted: bool = False,
    cli: CliRunner = run_cli,
    db: Path | None = None,
    tmp_dir: Path | None = None,
) -> Path:
    """A config with one SQLite source; with encryption, a fresh key pair made by `keygen`."""
    document: dict[str, Any] = {
        "repository": backend.repository,
        "compression": {"algorithm": compression},
        "sources": {"devdb": {"kind": "sqlite", "path": str(db or tmp_path / "dev.sqlite3")}},
    }
    if tmp_dir is not None:
        document["sources"]["devdb"]["tmp_dir"] = str(tmp_dir)
    if encrypted:
        key = tmp_path / "age.key"
        result = cli(None, "keygen", "--to", str(key))
        assert result.code == 0, result.stderr
        document["encryption"] = {"recipients": [result.stdout.strip()], "identity_file": str(key)}
    return write_toml(tmp_path / "backupctl.toml", document)
