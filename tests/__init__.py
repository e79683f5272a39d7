"""backupctl's test suite: ``unit/`` (pure: no servers, no temp dirs), ``integration/`` (real SQLite,
PostgreSQL, S3 endpoints and the CLI as a subprocess), ``support/`` (the helpers both import)."""

import pytest

# The helpers assert too (a CLI call that must succeed, a site that must come up): pytest rewrites their
# asserts to show the values, if it knows before conftest.py imports them.
pytest.register_assert_rewrite("tests.support")
