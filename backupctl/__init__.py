"""backupctl: backup and point-in-time recovery for PostgreSQL, with SQLite for development."""

__version__ = "0.1.0"
