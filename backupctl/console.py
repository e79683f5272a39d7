"""The ``backupctl`` console script: archive_command and restore_command calls skip the CLI's imports.

PostgreSQL runs archive_command once per WAL segment and restore_command once per segment in recovery. The
full CLI imports click, structlog and rich before it does anything (~110 ms per call on a 2-core machine);
``wal-push`` and ``wal-fetch`` go straight to ``walpusher``, which imports only the standard library, so a
user who writes ``backupctl wal-push %p`` by hand gets the fast path too. Help requests go to the CLI.
"""

from __future__ import annotations

import sys

from backupctl.cli.argv import command_word  # stdlib only: the fast path imports it

FAST_VERBS = ("wal-push", "wal-fetch")


def main() -> None:
    args = sys.argv[1:]
    if command_word(args) in FAST_VERBS and not {"-h", "--help"} & set(args):
        from backupctl import walpusher  # start-up cost: the fast path loads the standard library only

        sys.exit(walpusher.main(args))
    from backupctl.cli.app import main as cli_main  # start-up cost: click and the CLI only when needed

    cli_main()
