"""One exception family: every failure a user can cause or meet carries its own exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``; anything that is not a
``BackupctlError`` is a bug and gets a traceback hint instead.
"""

EXIT_FAILED = 1
EXIT_USAGE = 2


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
