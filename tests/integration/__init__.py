"""Tests against real things: SQLite files, PostgreSQL clusters, S3 endpoints, the CLI as a subprocess."""
