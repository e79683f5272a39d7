"""The archive_command / restore_command entry point: ``backupctl.walpusher``, as users' postgresql.conf names it.

    python -I -S /path/to/backupctl/walpusher.py [--config FILE] [--debug] wal-push [--source NAME] PATH
    python -I -S /path/to/backupctl/walpusher.py [--config FILE] [--debug] wal-fetch [--source NAME] [--epoch N]
                                                                                     NAME DEST

(``backupctl pg-settings`` prints these with the right paths; ``python -m backupctl.walpusher`` and
``backupctl wal-push`` / ``backupctl wal-fetch`` run the same code, only with a slower start.)

PostgreSQL runs archive_command once per segment, one at a time, and marks the segment archived when it
exits 0. Per call, this module imports only the standard library and ``backupctl.wal.agent``'s stdlib-only
modules (about 25 ms with the interpreter's start): it parses the arguments here and hands the work to
``agent.client``, which gives the file to the resident pusher (``agent.daemon``) over a Unix socket, or
does it in-process when the pusher cannot. Refusals that a retry cannot fix (another system's WAL, a
conflicting checksum, a name PostgreSQL never archives) fail at once with exit 1.

wal-fetch exits 0 with the file in place, 1 when it is not archived (but only when the repository knows the
source: a wrong --source, --epoch or config would otherwise end recovery early), and 128 on any other
failure, which makes PostgreSQL stop recovery rather than take the failure for the end of the archive.
``--epoch N`` fetches from history epoch N of the source (a cluster restored from a backup taken after
pg_upgrade: see ``backupctl.wal.epochs``); without it, epoch 1.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run as a script (python -I -S .../backupctl/walpusher.py): the package's parent is not on the path.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if _root not in sys.path:
        sys.path.insert(0, _root)

# Imported after the path is set when run as a script.
from backupctl.wal.agent.client import (
    EXIT_FETCH_FATAL,
    EXIT_USAGE,
    fetch_command,
    full_environment,
    push_command,
    say,
)

USAGE = (
    "usage: python -m backupctl.walpusher [--config FILE] [--debug] wal-push [--source NAME] PATH\n"
    "       python -m backupctl.walpusher [--config FILE] [--debug] wal-fetch [--source NAME] [--epoch N] NAME DEST"
)


class _UsageError(Exception):
    pass


def _epoch(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise _UsageError(f"--epoch {text!r} is not a history epoch (1, 2, ...)")
    return int(text)


def _parse(argv: list[str]) -> tuple[str | None, bool, str, str | None, int | None, list[str]]:
    config_file: str | None = None
    debug = False
    args = list(argv)
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option == "--debug":
            debug = True
        elif option == "--config" and args:
            config_file = args.pop(0)
        elif option.startswith("--config="):
            config_file = option.split("=", 1)[1]
        else:
            raise _UsageError(f"unknown option {option}")
    if not args:
        raise _UsageError("missing command")
    verb = args.pop(0)
    source: str | None = None
    epoch: int | None = None
    positional: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "--source" and args:
            source = args.pop(0)
        elif arg.startswith("--source="):
            source = arg.split("=", 1)[1]
        elif arg == "--epoch" and args:
            epoch = _epoch(args.pop(0))
        elif arg.startswith("--epoch="):
            epoch = _epoch(arg.split("=", 1)[1])
        elif arg == "--debug":
            debug = True
        elif arg == "--":
            positional.extend(args)
            break
        else:
            positional.append(arg)
    return config_file, debug, verb, source, epoch, positional


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        config_file, debug, verb, source, epoch, positional = _parse(args)
        if verb == "wal-fetch" and len(positional) == 2:
            return fetch_command(config_file, source, positional[0], positional[1], debug, epoch or 1)
        if epoch is not None:
            raise _UsageError(f"--epoch is an option of wal-fetch, not of {verb} (wal-push finds the epoch itself)")
        if verb == "wal-push" and len(positional) == 1:
            return push_command(config_file, source, positional[0], debug)
        if verb == "daemon" and len(positional) <= 1:
            full_environment()
            from backupctl.wal.agent.daemon import daemon_command  # the resident process only: the venv's imports

            return daemon_command(config_file, source, debug, *positional)
        raise _UsageError(f"wrong arguments for {verb}")
    except _UsageError as exc:
        say(f"{exc}\n{USAGE}")
        # For restore_command every code from 1 to 125 means "not archived": a typo must not end recovery.
        return EXIT_FETCH_FATAL if "wal-fetch" in args else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
