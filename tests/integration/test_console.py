"""The console script sends archive_command and restore_command calls to the fast path, the rest to the CLI."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(*args: str) -> tuple[int, set[str]]:
    """Run the console entry in a fresh interpreter; report its exit code and which heavy modules it loaded."""
    probe = (
        "import sys\n"
        f"sys.argv = ['backupctl', *{list(args)!r}]\n"
        "from backupctl.console import main\ncode = 0\n"
        "try:\n    main()\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "heavy = {'click', 'structlog', 'rich', 'boto3', 'zstandard'} & set(sys.modules)\n"
        "print(code, ' '.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    code, _, modules = out.strip().splitlines()[-1].partition(" ")
    return int(code), set(modules.split())


def test_wal_push_does_not_load_the_cli(tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[repository]\npath = "{tmp_path}/repo"\n[sources.main]\nkind = "postgres"\n')
    code, heavy = _modules_after("--config", str(config), "wal-push", "pg_wal/000000010000000000000001")
    assert code == 1, "a missing file fails"
    assert heavy == set()


def test_other_commands_and_help_go_to_the_cli() -> None:
    code, heavy = _modules_after("wal-push", "--help")
    assert code == 0 and "click" in heavy
