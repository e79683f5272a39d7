"""Shell completion through click's own protocol: the environment variables bash's completion function sets.

``_BACKUPCTL_COMPLETE=bash_complete`` with COMP_WORDS/COMP_CWORD is exactly what the script that
``_BACKUPCTL_COMPLETE=bash_source backupctl`` prints makes bash run on <Tab>; each answer line is
``type,value``. Source names come from the config, backup ids from the repository's listing; a broken
config or repository completes nothing and prints nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.cli import cli_env
from tests.support.config import write_toml
from tests.support.ops_helpers import sqlite_site


def complete(line: str, shell: str = "bash", **extra_env: str) -> subprocess.CompletedProcess[str]:
    """What ``backupctl`` answers to <Tab> at the end of ``line`` (a trailing space: a new, empty word)."""
    words = line.split(" ")
    env = {**cli_env(), **extra_env, "_BACKUPCTL_COMPLETE": f"{shell}_complete", "COMP_WORDS": line,
           "COMP_CWORD": str(len(words) - 1)}
    return subprocess.run([sys.executable, "-m", "backupctl"], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def values(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]  # nothing: one empty line


def test_source_names_and_backup_ids_complete_from_the_config_and_the_repository(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path, {"sources": {"devapp": {"kind": "sqlite", "path": str(tmp_path / "app.db")}}})
    first = json.loads(site.cli("backup", "devdb", "-o", "json").stdout)["id"]
    second = json.loads(site.cli("backup", "devdb", "-o", "json").stdout)["id"]
    config = f"backupctl --config {site.config}"

    assert values(complete(f"{config} backup ")) == ["devapp", "devdb"]
    assert values(complete(f"{config} backup devd")) == ["devdb"]
    assert values(complete(f"{config} status devdb ")) == ["devapp", "devdb"]
    assert values(complete(f"{config} wal status ")) == ["devapp", "devdb"]
    assert values(complete(f"{config} verify --latest dev")) == ["devapp", "devdb"]
    assert values(complete(f"{config} show ")) == [second, first], "newest first"
    assert values(complete(f"{config} show {first[:-3]}")) == [first]
    assert values(complete(f"{config} pin ")) == [second, first]
    assert values(complete(f"{config} restore ")) == ["devapp", "devdb", second, first]
    assert values(complete(f"{config} drill run devapp --backup ")) == [], "only the named source's backups"
    assert values(complete(f"{config} drill run devdb --backup ")) == [second, first]
    # Commands and options still come from click, and zsh gets the source's kind as help.
    assert "backup" in values(complete(f"{config} back"))
    zsh = complete(f"{config} backup dev", shell="zsh")
    assert zsh.returncode == 0 and zsh.stdout.split("\n")[:3] == ["plain", "devapp", "sqlite"], zsh.stdout


def test_completion_is_silent_when_the_config_or_the_repository_is_broken(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    assert values(complete(f"backupctl --config {missing} backup ")) == []
    assert values(complete(f"backupctl --config {tmp_path} show ")) == [], "a directory, not a config"
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(b"\x00\xff[[[")
    assert values(complete(f"backupctl --config {garbage} restore ")) == []
    # A valid config whose repository does not exist: sources still complete, backup ids do not.
    config = write_toml(tmp_path / "backupctl.toml", {
        "repository": {"type": "local", "path": str(tmp_path / "no-repo")},
        "sources": {"devdb": {"kind": "sqlite", "path": str(tmp_path / "dev.db")}}})
    assert values(complete(f"backupctl --config {config} restore ")) == ["devdb"]
    assert values(complete(f"backupctl --config {config} show ")) == []
    # $BACKUPCTL_CONFIG is honoured as the commands honour it.
    assert values(complete("backupctl backup ", BACKUPCTL_CONFIG=str(config))) == ["devdb"]


def test_bash_sources_the_completion_script(tmp_path: Path) -> None:
    script = subprocess.run([sys.executable, "-m", "backupctl"], capture_output=True, text=True, timeout=60,
                            env={**cli_env(), "_BACKUPCTL_COMPLETE": "bash_source"}, check=False)
    assert script.returncode == 0 and "_backupctl_completion" in script.stdout, script.stderr
    (tmp_path / "backupctl.bash").write_text(script.stdout)
    shown = subprocess.run(["bash", "-c", f"source {tmp_path / 'backupctl.bash'} && complete -p backupctl"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "-F _backupctl_completion" in shown.stdout and shown.stdout.strip().endswith("backupctl")
