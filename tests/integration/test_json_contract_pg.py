"""What the CLI prints in JSON for a PostgreSQL source (WAL, the restore plan, status with a live server) has
exactly the fields docs/json-output.md documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import json_contract
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import archiving_site


def test_postgres_commands_json_has_exactly_the_documented_fields(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:

        def printed(*args: str) -> Any:
            result = site.cli(*args, "-o", "json")
            assert result.code == 0, result.stderr
            return json.loads(result.stdout)

        json_contract.check("backup", printed("backup", "main", "--type", "full"))
        site.wait_archived(site.switch())
        json_contract.check("wal check", printed("wal", "check", "main"))
        json_contract.check("wal status", printed("wal", "status", "main"))
        json_contract.check("wal verify", printed("wal", "verify", "main"))
        json_contract.check("wal new-epoch", printed("wal", "new-epoch", "main"))
        json_contract.check("restore --plan", printed("restore", "main", "--dry-run"))
        json_contract.check("restore", printed("restore", "main", "--pgdata", str(site.root / "restored")))
        status = printed("status", "main")
        assert status[0]["server"]["reachable"] and status[0]["timelines"] is not None
        json_contract.check("status", status)
        json_contract.check("check", printed("check", "main"))
