"""The CLI as a real subprocess (``python -m backupctl``) with a scrubbed environment, as cron or
archive_command would run it: everything it needs comes from the config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def cli_env() -> dict[str, str]:
    """The bare environment archive_command and cron give: no AWS_*, no BACKUPCTL_CONFIG."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")
    return {k: v for k, v in os.environ.items() if k in keep}


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The one-line error backupctl prints last on stderr."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("backupctl: error:")]
        assert len(lines) == 1, self.stderr
        return lines[0]


CliRunner = Callable[..., Result]


def run_cli(config: Path | None, *args: str, timeout: float = 300) -> Result:
    command = [sys.executable, "-m", "backupctl"]
    if config is not None:
        command += ["--config", str(config)]
    proc = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=cli_env(), timeout=timeout, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def backup_id(result: Any) -> str:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)["id"]
