"""The ``backupctl`` console script: archive_command and restore_command calls skip the CLI's imports.

PostgreSQL runs archive_command once per WAL segment and restore_command once per segment in recovery. The
full CLI imports click, structlog and rich before it does anything (~110 ms per call on a 2-core machine);
``wal-push`` and ``wal-fetch`` go straight to ``walpusher``, which imports only the standard library, so a
user who writes ``backupctl wal-push %p`` by hand gets the fast path too. Help requests go to the CLI.
"""

from __future__ import annotations

import sys

FAST_VERBS = ("wal-push", "wal-fetch")


def command_word(args: list[str]) -> str | None:
    """The command word after the global options (--config FILE, --config=FILE, --debug)."""
    rest = iter(args)
    for arg in rest:
        if arg == "--config":
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
        elif arg != "--debug" and not arg.startswith("--config="):
            return None
    return None


def main() -> None:
    args = sys.argv[1:]
    if command_word(args) in FAST_VERBS and not {"-h", "--help"} & set(args):
        from backupctl import walpusher

        sys.exit(walpusher.main(args))
    from backupctl.cli.app import main as cli_main

    cli_main()
