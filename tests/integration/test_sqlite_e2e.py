"""SQLite end to end through the real CLI, on a local directory and on real S3 endpoints."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupctl.core.config import load_config
from backupctl.demo import Writer, make_sample_sqlite, table_counts, table_rows
from backupctl.repo.pipeline import Pipeline, StoredObject
from tests.support.backends import Backend, make_backend
from tests.support.cli import CliRunner, backup_id, cli_env
from tests.support.config import make_config
from tests.support.store_faults import random_db

TABLES = ("customers", "orders", "order_items", "events")


def assert_same_rows(source: Path, restored: Path) -> None:
    for table in TABLES:
        assert table_rows(restored, table) == table_rows(source, table), table


def stored_bytes(backend: Backend) -> bytes:
    storage = backend.storage()
    return b"".join(storage.get_bytes(info.key) for info in storage.list(""))


CASES = [(b, c, e) for b in ("local",) for c in ("zstd", "lz4", "gzip", "none") for e in (False, True)] + [
    (b, c, e) for b in ("moto", "seaweedfs") for c, e in (("zstd", True), ("none", False), ("lz4", True))
]


@pytest.mark.parametrize(("backend_name", "compression", "encrypted"), CASES)
def test_round_trip(
    tmp_path: Path, request: pytest.FixtureRequest, cli: CliRunner, backend_name: str, compression: str,
    encrypted: bool,
) -> None:
    backend = make_backend(backend_name, tmp_path, request)
    db = tmp_path / "dev.sqlite3"
    counts = make_sample_sqlite(db, customers=300)
    config = make_config(tmp_path, backend, compression=compression, encrypted=encrypted, cli=cli)

    assert cli(config, "init").code == 0
    bid = backup_id(cli(config, "backup", "devdb", "--export-json", "--label", "env=test", "-o", "json"))

    listed = json.loads(cli(config, "list", "devdb", "-o", "json").stdout)
    assert [b["id"] for b in listed] == [bid]
    assert listed[0]["encrypted"] is encrypted and listed[0]["labels"] == {"env": "test"}

    shown = json.loads(cli(config, "show", bid, "-o", "json").stdout)
    assert shown["details"]["tables"] == counts
    assert {o["compression"] for o in shown["objects"]} == {compression}
    assert all((o["encryption"] == "age") is encrypted for o in shown["objects"])

    verified = cli(config, "verify", bid, "-o", "json")
    assert verified.code == 0, verified.stderr
    report = json.loads(verified.stdout)[0]
    assert report["ok"] and report["mode"] == "full" and report["objects"] == len(shown["objects"])

    restored = tmp_path / "restored.sqlite3"
    result = cli(config, "restore", bid, "--to", str(restored))
    assert result.code == 0, result.stderr
    assert_same_rows(db, restored)

    # The JSON export decodes to exactly the rows of the table.
    pipeline = Pipeline(backend.storage(), load_config(config))
    export_key = f"devdb/backups/{bid}/" + shown["details"]["export"]["tables"]["orders"]
    orders = next(o for o in shown["objects"] if o["key"].startswith(export_key))
    sink = io.BytesIO()
    pipeline.read(StoredObject.from_json(orders), sink)
    lines = [json.loads(line) for line in sink.getvalue().decode().splitlines()]
    assert [tuple(row.values()) for row in lines] == table_rows(db, "orders")

    if encrypted:
        # Nothing stored names a table or holds a schema fragment or a customer's name.
        everything = stored_bytes(backend)
        for secret in (b"customers", b"order_items", b"CREATE TABLE", b"Lovelace", b"example.org"):
            assert secret not in everything


def test_writer_active_during_backup(tmp_path: Path, local_backend: Backend, cli: CliRunner) -> None:
    """Each backup holds whole transactions only, and row counts that match its manifest."""
    for mode, wal in (("wal", True), ("rollback", False)):
        db = tmp_path / f"{mode}.sqlite3"
        make_sample_sqlite(db, customers=3000, wal=wal)
        config = make_config(tmp_path, local_backend, db=db)
        cli(config, "init")
        writer = Writer(db)
        writer.start()
        time.sleep(0.2)
        try:
            bids = [backup_id(cli(config, "backup", "devdb", "-o", "json")) for _ in range(3)]
        finally:
            writer.stop.set()
            writer.join()
        assert writer.batches > 10
        for bid in bids:
            restored = tmp_path / f"{mode}-{bid}.sqlite3"
            assert cli(config, "restore", bid, "--to", str(restored)).code == 0
            events = table_rows(restored, "events")
            batches: dict[int, int] = {}
            for _id, batch, _payload in events:
                batches[batch] = batches.get(batch, 0) + 1
            assert set(batches.values()) <= {Writer.BATCH}
            assert events == table_rows(db, "events")[: len(events)]
            shown = json.loads(cli(config, "show", bid, "-o", "json").stdout)
            assert shown["details"]["tables"]["events"] == len(events)


def damage(backend: Backend, key: str, how: str) -> None:
    """Flip one byte in the middle of a stored object, or cut its tail off, behind backupctl's back."""
    storage = backend.storage()
    data = bytearray(storage.get_bytes(key))
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) - 100]
    storage.put(key, bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("encrypted", [False, True])
def test_damage_detected_by_verify_and_restore(
    tmp_path: Path, backend: Backend, cli: CliRunner, how: str, encrypted: bool
) -> None:
    db = tmp_path / "dev.sqlite3"
    make_sample_sqlite(db, customers=300)
    config = make_config(tmp_path, backend, encrypted=encrypted, cli=cli)
    cli(config, "init")
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    key = json.loads(cli(config, "show", bid, "-o", "json").stdout)["objects"][0]["key"]
    damage(backend, key, how)

    verified = cli(config, "verify", bid, "-o", "json")
    assert verified.code == 1
    assert json.loads(verified.stdout)[0]["ok"] is False
    assert "damaged" in verified.error_line and key in verified.error_line

    everything = cli(config, "verify", "--all")
    assert everything.code == 1 and "1 of 1 backups are damaged" in everything.error_line

    target = tmp_path / "restored.sqlite3"
    restored = cli(config, "restore", bid, "--to", str(target))
    assert restored.code == 1 and key in restored.error_line
    assert not target.exists()
    assert not list(tmp_path.glob(".restored.sqlite3.backupctl-*"))


def test_damaged_manifest_is_reported_not_trusted(
    tmp_path: Path, local_backend: Backend, cli: CliRunner
) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=50)
    config = make_config(tmp_path, local_backend)
    cli(config, "init")
    good = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    bad = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    key = f"devdb/backups/{bad}/manifest.json"
    storage = local_backend.storage()
    storage.put(key, storage.get_bytes(key).replace(b'"size": ', b'"size": 1', 1))

    listed = cli(config, "list", "-o", "json")
    assert [b["id"] for b in json.loads(listed.stdout)] == [good]
    assert "damaged manifest" in listed.stderr
    shown = cli(config, "show", bad)
    assert shown.code == 1 and "fails its own checksum" in shown.error_line
    verified = cli(config, "verify", "--all", "-o", "json")
    assert verified.code == 1
    assert {r["id"]: r["ok"] for r in json.loads(verified.stdout)} == {good: True, bad: False}


def test_identities(tmp_path: Path, backend: Backend, cli: CliRunner) -> None:
    """Public key alone: back up, list, show the plaintext facts; restoring needs the right identity."""
    db = tmp_path / "dev.sqlite3"
    make_sample_sqlite(db, customers=100)
    config = make_config(tmp_path, backend, encrypted=True, cli=cli)
    document_text = config.read_text()
    public_only = tmp_path / "public.toml"
    public_only.write_text("\n".join(x for x in document_text.splitlines() if "identity_file" not in x))

    cli(public_only, "init")
    bid = backup_id(cli(public_only, "backup", "devdb", "-o", "json"))
    assert [b["id"] for b in json.loads(cli(public_only, "list", "-o", "json").stdout)] == [bid]
    shown = json.loads(cli(public_only, "show", bid, "-o", "json").stdout)
    assert shown["details"] is None and shown["totals"]["objects"] == 1
    stored_only = cli(public_only, "verify", bid, "-o", "json")
    assert stored_only.code == 0 and json.loads(stored_only.stdout)[0]["mode"] == "stored"

    target = tmp_path / "restored.sqlite3"
    no_identity = cli(public_only, "restore", bid, "--to", str(target))
    assert no_identity.code == 1 and "identity_file" in no_identity.error_line

    other_key = tmp_path / "other.key"
    cli(None, "keygen", "--to", str(other_key))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(document_text.replace(str(tmp_path / "age.key"), str(other_key)))
    refused = cli(wrong, "restore", bid, "--to", str(target))
    assert refused.code == 1 and "cannot open backup" in refused.error_line
    assert "AGE-SECRET-KEY" not in refused.stderr

    missing = tmp_path / "missing.toml"
    missing.write_text(document_text.replace(str(tmp_path / "age.key"), str(tmp_path / "nope.key")))
    absent = cli(missing, "restore", bid, "--to", str(target))
    assert absent.code == 1 and "does not exist" in absent.error_line
    assert not target.exists()

    assert cli(config, "restore", bid, "--to", str(target)).code == 0
    assert_same_rows(db, target)


def test_restore_refuses_to_overwrite(tmp_path: Path, local_backend: Backend, cli: CliRunner) -> None:
    db = tmp_path / "dev.sqlite3"
    make_sample_sqlite(db, customers=50)
    config = make_config(tmp_path, local_backend)
    cli(config, "init")
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    target = tmp_path / "app.sqlite3"
    target.write_bytes(b"precious")
    Path(f"{target}-wal").write_bytes(b"stale wal")
    refused = cli(config, "restore", bid, "--to", str(target))
    assert refused.code == 2 and "--force" in refused.error_line
    assert target.read_bytes() == b"precious"
    assert cli(config, "restore", bid, "--to", str(target), "--force").code == 0
    assert not Path(f"{target}-wal").exists()
    assert_same_rows(db, target)


def _upload_in_progress(backend: Backend) -> bool:
    if backend.endpoint is None:
        # Only the data upload: source.json and the lease are written (through temp files) before it starts.
        return any((Path(backend.repository["path"]) / "devdb" / "backups").rglob(".tmp-*"))
    uploads = backend.raw_client().list_multipart_uploads(Bucket=backend.repository["bucket"])
    return bool(uploads.get("Uploads"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_backup_is_invisible(
    tmp_path: Path, backend: Backend, cli: CliRunner, sig: signal.Signals
) -> None:
    db = tmp_path / "dev.sqlite3"
    random_db(db, 160)
    tmp_dir = tmp_path / "stage"
    tmp_dir.mkdir()
    backend.repository["lease_ttl"] = "10s"  # S3's whole-second Last-Modified eats up to a second of it
    config = make_config(
        tmp_path, backend, compression="none", db=db, encrypted=sig == signal.SIGTERM, tmp_dir=tmp_dir
    )
    cli(config, "init")
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupctl", "--config", str(config), "backup", "devdb"],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not _upload_in_progress(backend):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(30)
    assert proc.returncode != 0
    if sig == signal.SIGKILL:
        # A killed backup cannot release its lease: the next one is refused, naming the dead holder,
        # until the lease expires by the store's clock, then takes it over.
        refused = cli(config, "backup", "devdb")
        assert refused.code == 1 and f"pid {proc.pid} (sqlite backup)" in refused.error_line

    assert json.loads(cli(config, "list", "-o", "json").stdout) == []
    partial = [i.key for i in backend.storage().list("devdb/backups/")]
    assert not any(k.endswith("manifest.json") for k in partial)
    if sig == signal.SIGTERM:
        # A clean interruption removes its own debris: the staged copy and the partial upload.
        assert list(tmp_dir.iterdir()) == []
        assert not _upload_in_progress(backend)
        assert proc.stderr is not None and b"interrupted by SIGTERM" in proc.stderr.read()
    else:
        time.sleep(11)

    # The repository is still healthy: the next backup works and is the only one listed.
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    assert [b["id"] for b in json.loads(cli(config, "list", "-o", "json").stdout)] == [bid]


def test_backup_of_missing_or_foreign_source(tmp_path: Path, local_backend: Backend, cli: CliRunner) -> None:
    config = make_config(tmp_path, local_backend)
    cli(config, "init")
    missing = cli(config, "backup", "devdb")
    assert missing.code == 1 and "does not exist" in missing.error_line
    (tmp_path / "dev.sqlite3").write_text("not a database")
    foreign = cli(config, "backup", "devdb")
    assert foreign.code == 1 and "not a SQLite 3 database" in foreign.error_line
    unknown = cli(config, "backup", "nosuch")
    assert unknown.code == 2 and "no source 'nosuch'" in unknown.error_line
    assert json.loads(cli(config, "list", "-o", "json").stdout) == []


def test_manifest_counts_every_table(tmp_path: Path, local_backend: Backend, cli: CliRunner) -> None:
    """The manifest's row counts are exact, for every table, including WITHOUT ROWID ones."""
    db = tmp_path / "dev.sqlite3"
    make_sample_sqlite(db, customers=200)
    with sqlite3.connect(db) as connection:
        expected = table_counts(connection)
    config = make_config(tmp_path, local_backend)
    cli(config, "init")
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    details = json.loads(cli(config, "show", bid, "-o", "json").stdout)["details"]
    assert details["tables"] == expected
    assert details["journal_mode"] == "wal" and details["page_size"] == 4096
    assert "CREATE TRIGGER orders_total_positive" in details["schema_sql"]
