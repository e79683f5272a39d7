"""The command word of an argument list, found without click: the console script's fast path needs it.

``backupctl.console`` sends ``wal-push`` and ``wal-fetch`` straight to the stdlib-only WAL agent, and the CLI
answers a monitoring plugin's bad arguments with UNKNOWN; both must know the command before click parses
anything. This module therefore imports nothing (and ``backupctl.cli``'s ``__init__`` nothing either).
"""

from __future__ import annotations


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
