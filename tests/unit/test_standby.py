"""The settings a standby restore writes, the combinations it refuses, and the WAL receiver lines it quotes
(services/standby.py; the real replicas are in tests/integration/test_replica_create.py)."""

from __future__ import annotations

import pytest

from backupctl.core.errors import ConfigError
from backupctl.services.pitr import Target
from backupctl.services.standby import StandbyRequest, check_request, receiver_error

END = Target("end")


def test_an_archive_only_standby_writes_an_empty_primary_conninfo_and_no_slot() -> None:
    request = check_request(True, None, None, END)
    assert request == StandbyRequest()
    assert request.settings() == {"primary_conninfo": ""}
    assert request.to_json("latest") == {"mode": "archive-only", "primary": None, "primary_conninfo": None,
                                         "slot": None, "recovery_target_timeline": "latest"}


def test_a_streaming_standby_writes_its_conninfo_and_slot_and_never_shows_the_password() -> None:
    request = check_request(True, "host=db1 port=5433 user=rep password=s3cret", "replica1", END)
    assert request is not None and request.streaming
    assert request.settings() == {"primary_conninfo": "host=db1 port=5433 user=rep password=s3cret",
                                  "primary_slot_name": "replica1"}
    shown = request.to_json("latest")
    assert shown["primary"] == "db1:5433" and shown["slot"] == "replica1"
    assert "s3cret" not in shown["primary_conninfo"] and "password=********" in shown["primary_conninfo"]
    # Without --slot an inherited primary_slot_name is overridden too; libpq's default port is shown.
    unslotted = check_request(True, "postgresql://rep@db2/postgres", None, END)
    assert unslotted is not None
    assert unslotted.settings()["primary_slot_name"] == "" and unslotted.primary() == "db2:5432"


def test_without_standby_nothing_is_asked_and_its_options_are_refused() -> None:
    assert check_request(False, None, None, Target("time", "2026-01-01")) is None
    with pytest.raises(ConfigError, match="add --standby"):
        check_request(False, "host=db1", None, END)
    with pytest.raises(ConfigError, match="add --standby"):
        check_request(False, None, "s1", END)


@pytest.mark.parametrize(("target", "message"), [
    (Target("time", "2026-01-01"), r"no recovery target \(--target-time\)"),
    (Target("lsn", "0/3000000"), r"no recovery target \(--target-lsn\)"),
    (Target("xid", "1234"), r"no recovery target \(--target-xid\)"),
    (Target("name", "before"), r"no recovery target \(--target-name\)"),
    (Target("immediate"), r"no recovery target \(--target immediate\)"),
    (Target("end", action="promote"), "no --target-action or --exclusive"),
    (Target("end", inclusive=False), "no --target-action or --exclusive"),
])
def test_a_standby_takes_no_recovery_target(target: Target, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_request(True, None, None, target)


@pytest.mark.parametrize(("conninfo", "slot", "message"), [
    (None, "s1", "--slot needs --primary-conninfo"),
    ("host=db1 port", None, 'libpq accepts: missing "=" after "port" in connection info string$'),
    ("nosuchkey=1", None, 'invalid connection option "nosuchkey"'),
    ("  ", None, "is empty: leave it out for an archive-only standby"),
    ("host=db1", "Replica-1", "is not a replication slot name"),
    ("host=db1", "x" * 64, "is not a replication slot name"),
])
def test_bad_standby_options_are_one_usage_line(conninfo: str | None, slot: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        check_request(True, conninfo, slot, END)
    assert "\n" not in str(caught.value)


def test_the_wal_receivers_newest_complaint_is_quoted_and_client_noise_is_not() -> None:
    log = ("2026-12-06 02:00:00 UTC [12] FATAL:  the database system is starting up\n"
           "2026-12-06 02:00:01 UTC [13] LOG:  started streaming WAL from primary at 0/3000000 on timeline 1\n"
           "2026-12-06 02:00:02 UTC [14] FATAL:  could not connect to the primary server: connection to server "
           "at \"127.0.0.1\", port 5999 failed: Connection refused\n"
           "2026-12-06 02:00:07 UTC [15] FATAL:  could not start WAL streaming: ERROR:  replication slot "
           "\"nosuch\" does not exist\n")
    assert receiver_error(log) == ('FATAL: could not start WAL streaming: ERROR: replication slot "nosuch" '
                                   "does not exist")
    assert receiver_error("LOG:  database system is ready to accept read-only connections\n") is None
