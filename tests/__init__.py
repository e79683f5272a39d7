"""backupctl's test suite: ``unit/`` (pure: no servers, no temp dirs), ``integration/`` (real SQLite,
PostgreSQL, S3 endpoints and the CLI as a subprocess), ``support/`` (the helpers both import)."""
