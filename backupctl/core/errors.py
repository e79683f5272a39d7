"""One exception family, and every exit code the product uses.

Every failure a user can cause or meet carries its own exit code. The CLI prints ``str(error)`` as one
line (the cause it was raised from only with ``--debug``, in the traceback) and exits with
``error.exit_code``; anything that is not a ``BackupctlError`` is a bug and gets a traceback hint instead.

The exit codes below are the only ones backupctl returns; every module takes them from here. The
stdlib-only WAL fast path (``wal/agent``) keeps copies, which a unit test holds equal to these.
"""

# --- exit codes (README "Exit codes" and docs/json-output.md list them) ---------------------------------

EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed: the error line says what and how to fix it
EXIT_USAGE = 2  # the command line or the config file is wrong
# `check` is a monitoring plugin (Nagios, Icinga, Sensu): its exit code is the worst finding's state, and
# even its own usage errors are UNKNOWN, since its 2 reads as CRITICAL.
CHECK_OK = 0
CHECK_WARNING = 1
CHECK_CRITICAL = 2
CHECK_UNKNOWN = 3
# wal-fetch (restore_command): an exit code above 125 makes PostgreSQL abort recovery instead of ending it
# as at the end of the archive; used when a segment exists but cannot be read (damaged, undecryptable).
EXIT_FETCH_FATAL = 128
EXIT_SIGNAL_BASE = 128  # stopped by signal N (SIGINT, SIGTERM): 128 + N, as a shell reports it

EXIT_CODES: tuple[tuple[str, str], ...] = (
    (str(EXIT_OK), "success (`check`: every finding OK)"),
    (str(EXIT_FAILED), "the operation failed; one line on stderr says why (`check`: WARNING)"),
    (str(EXIT_USAGE), "a usage or config error: nothing was done (`check`: CRITICAL)"),
    (str(CHECK_UNKNOWN), "`check` only: UNKNOWN (it could not look, or its arguments are wrong)"),
    (str(EXIT_FETCH_FATAL), "`wal-fetch` only: the segment exists but cannot be read; PostgreSQL stops recovery"),
    (f"{EXIT_SIGNAL_BASE} + N", "stopped by signal N (130 SIGINT, 143 SIGTERM); partial uploads removed"),
)


def signal_exit_code(signum: int) -> int:
    """The exit code of a process stopped by signal ``signum``."""
    return EXIT_SIGNAL_BASE + signum


class BackupctlError(Exception):
    """An operation failed (exit 1): the message says what and, where it can, how to fix it."""

    exit_code = EXIT_FAILED


class ConfigError(BackupctlError):
    """The config file or the command line is wrong (exit 2)."""

    exit_code = EXIT_USAGE


class StorageError(BackupctlError):
    """The repository's store refused or failed a request."""


class ObjectNotFound(StorageError):
    """A key that should exist in the repository does not."""


class IntegrityError(BackupctlError):
    """Stored bytes do not match what the manifest recorded: corruption, truncation or tampering."""


class DecryptionError(BackupctlError):
    """An object cannot be decrypted with the configured identity."""


class Interrupted(BaseException):
    """A signal asked the process to stop.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way up mistakes it
    for bad data and keeps working; ``finally`` blocks still remove temp files and abort uploads.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return signal_exit_code(self.signum)
