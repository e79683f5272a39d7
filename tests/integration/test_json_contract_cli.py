"""What the CLI prints in JSON has exactly the fields docs/json-output.md documents, on a SQLite source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backupctl.demo import make_sample_sqlite
from tests.support import json_contract
from tests.support.backends import Backend
from tests.support.cli import CliRunner
from tests.support.config import make_config


def test_each_commands_json_has_exactly_the_documented_fields(tmp_path: Path, local_backend: Backend,
                                                                cli: CliRunner) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    config = make_config(tmp_path, local_backend, encrypted=True, cli=cli)
    with config.open("a") as file:
        file.write('[sources.devdb.retention]\nkeep_last = 1\n[sources.devdb.schedule]\nbackup = "0 2 * * *"\n')
    assert cli(config, "init").code == 0

    def printed(*args: str) -> Any:
        result = cli(config, *args, "-o", "json")
        assert result.code == 0, result.stderr
        return json.loads(result.stdout)

    first = printed("backup", "devdb", "--label", "env=test")
    json_contract.check("backup", first)
    printed("backup", "devdb")
    assert cli(config, "pin", first["id"], "--reason", "legal hold").code == 0
    json_contract.check("list", printed("list"))
    json_contract.check("show", printed("show", first["id"]))
    json_contract.check("verify", printed("verify", "--latest", "devdb"))
    json_contract.check("expire", printed("expire", "devdb", "--dry-run"))
    json_contract.check("delete", printed("delete", first["id"], "--dry-run"))
    made = cli(None, "keygen", "--to", str(tmp_path / "more.key"), "-o", "json")
    assert made.code == 0, made.stderr
    json_contract.check("keygen", json.loads(made.stdout))
    drill = printed("drill", "run", "devdb")
    json_contract.check("drill run", drill)
    stored = {"drill run": json_contract.tables()["drill record"]}
    for document in [*printed("drill", "list"), printed("drill", "show", drill["id"])]:
        json_contract.check("drill run", document, extra=stored)
    json_contract.check("status", printed("status"))
    json_contract.check("check", printed("check"))
    json_contract.check("scheduler jobs", printed("scheduler", "jobs"))
    assert printed("repo", "gc", "--dry-run") == []
