"""Connecting to a configured PostgreSQL server, from Python (psycopg) and from its client tools.

Both use the same libpq settings: the config's keys, with the usual PG* environment variables filling
what the config leaves out. A password comes from ``password_file``, a ``passfile`` or PGPASSWORD and is
passed to child processes only through their environment, never on a command line or in a log.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupctl.core.config import PostgresSource
from backupctl.core.errors import BackupctlError, ConfigError

APPLICATION_NAME = "backupctl"


@dataclass(frozen=True)
class ConnParams:
    """Where and as whom to connect; ``None`` leaves a setting to libpq's defaults and environment."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    dbname: str = "postgres"
    sslmode: str | None = None
    passfile: str | None = None
    password_file: str | None = None
    connect_timeout: int = 10

    @classmethod
    def from_source(cls, source: PostgresSource) -> ConnParams:
        return cls(
            host=source.host,
            port=source.port,
            user=source.user,
            dbname=source.dbname,
            sslmode=source.sslmode,
            passfile=source.passfile,
            password_file=source.password_file,
            connect_timeout=source.connect_timeout,
        )

    def with_(self, **changes: Any) -> ConnParams:
        """A copy with the given settings replaced (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self, dbname: str | None = None) -> str:
        """For messages: "database app on 127.0.0.1:5432 as postgres" (never a password)."""
        where = self.host or os.environ.get("PGHOST") or "the default socket"
        port = self.port or os.environ.get("PGPORT") or 5432
        user = self.user or os.environ.get("PGUSER") or "the OS user's role"
        return f"database {dbname or self.dbname} on {where}:{port} as {user}"

    def address(self) -> str:
        """Where the server is, for manifests and listings: "db1.example.com:5432", "/var/run/postgresql:5433"."""
        where = self.host or os.environ.get("PGHOST") or "localhost"
        return f"{where}:{self.port or os.environ.get('PGPORT') or 5432}"

    def _password(self) -> str | None:
        if self.password_file is None:
            return None
        try:
            return Path(self.password_file).read_text().strip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read password_file {self.password_file}: {exc.strerror}") from exc

    def env(self) -> dict[str, str]:
        """The environment for pg_dump, pg_restore, psql: the current one plus these settings."""
        env = dict(os.environ)
        pairs = {
            "PGHOST": self.host,
            "PGPORT": self.port,
            "PGUSER": self.user,
            "PGSSLMODE": self.sslmode,
            "PGPASSFILE": self.passfile,
            "PGPASSWORD": self._password(),
            "PGCONNECT_TIMEOUT": self.connect_timeout,
            "PGAPPNAME": APPLICATION_NAME,
        }
        env.update({k: str(v) for k, v in pairs.items() if v is not None})
        return env

    def connect(self, dbname: str | None = None, autocommit: bool = True) -> Any:
        """A psycopg connection; a failure is one line naming the server and libpq's reason."""
        import psycopg  # ~120 ms: only a command that talks to the server pays it

        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.dbname,
            "sslmode": self.sslmode,
            "passfile": self.passfile,
            "password": self._password(),
            "connect_timeout": self.connect_timeout,
            "application_name": APPLICATION_NAME,
        }
        try:
            settings = {k: v for k, v in kwargs.items() if v is not None}
            return psycopg.connect(autocommit=autocommit, **settings)
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())
            raise BackupctlError(f"cannot connect to {self.describe(dbname)}: {reason}") from exc
