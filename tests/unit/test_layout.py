"""The repository's key layout is a contract with every repository already written: pin each key exactly,
and keep every other module from spelling one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from backupctl.repo import layout

BID = "20261125T021500123Z-F-k3x"


@pytest.mark.parametrize(("key", "expected"), [
    (layout.MARKER, "backupctl.json"),
    (layout.conditional_write_probe_key("0123abcd"), ".probe/0123abcd"),
    (layout.source_prefix("main"), "main/"),
    (layout.stream_record_key("main"), "main/source.json"),
    (layout.backups_prefix("main"), "main/backups/"),
    (layout.backup_prefix("main", BID), f"main/backups/{BID}/"),
    (layout.manifest_key("main", BID), f"main/backups/{BID}/manifest.json"),
    (layout.expired_marker_key("main", BID), f"main/backups/{BID}/expired.json"),
    (layout.SQLITE_DATABASE, "database.sqlite3"),
    (layout.SQLITE_EXPORT_SCHEMA, "export/schema.sql"),
    (layout.sqlite_table_export(3), "export/0003.jsonl"),
    (layout.PG_GLOBALS, "globals.sql"),
    (layout.pg_database_dump(12), "databases/0012.pgdump"),
    (layout.PG_BACKUP_MANIFEST, "backup_manifest"),
    (layout.config_file("postgresql.conf"), "config/postgresql.conf"),
    (layout.CONFIG_FILES, "config/"),
    (layout.BASE_ARCHIVE, "base"),
    (layout.tar_archive("base.tar"), "base"),
    (layout.tar_archive("16384.tar"), "tablespaces/16384"),
    (layout.tar_part("base", 7), "base/0007.tar"),
    (layout.tar_part("tablespaces/16384", 0), "tablespaces/16384/0000.tar"),
    (layout.verifications_prefix("main"), "main/verifications/"),
    (layout.verification_key("main", "20261125T021500123Z-V-abc"), "main/verifications/20261125T021500123Z-V-abc.json"),
    (layout.drills_prefix("main"), "main/drills/"),
    (layout.drill_key("main", "20261125T021500123Z-D-abc"), "main/drills/20261125T021500123Z-D-abc.json"),
    (layout.locks_prefix("main"), "main/locks/"),
    (layout.locks_prefix(None), "locks/"),
    (layout.lease_prefix("main", "backup"), "main/locks/backup."),
    (layout.lease_prefix(None, "gc"), "locks/gc."),
    (layout.lease_generation_key("main/locks/backup.", 2), "main/locks/backup.000000000002.json"),
    (layout.reader_leases_prefix("main"), "main/locks/readers/"),
    (layout.reader_lease_key("main", "host-42-beef"), "main/locks/readers/host-42-beef.json"),
    (layout.clock_probes_prefix("main"), "main/locks/clock/"),
    (layout.clock_probes_prefix(None), "locks/clock/"),
    (layout.clock_probe_key(None, "host-42-beef"), "locks/clock/host-42-beef"),
    (layout.pins_prefix("main"), "main/pins/"),
    (layout.pin_key("main", BID), f"main/pins/{BID}.json"),
    (layout.epoch_stream("main", 1), "main"),
    (layout.epoch_stream("main", 3), "main/epochs/3"),
    (layout.epochs_prefix("main"), "main/epochs/"),
    (layout.stream_record_key("main/epochs/3"), "main/epochs/3/source.json"),
    (layout.wal_prefix("main/epochs/3"), "main/epochs/3/wal/"),
    (layout.wal_folder_prefix("main", "0000000100000000"), "main/wal/0000000100000000/"),
    (layout.wal_object_prefix("main", "0000000100000000", "000000010000000000000003"),
     "main/wal/0000000100000000/000000010000000000000003-"),
    (layout.wal_object_prefix("main", "", "00000002.history"), "main/wal/00000002.history-"),
    (layout.wal_segment_size_key("main"), "main/wal/segment_size.json"),
])
def test_every_key_is_spelled_as_repositories_already_hold_it(key: str, expected: str) -> None:
    assert key == expected


def test_keys_read_back_into_their_parts() -> None:
    assert layout.backup_id_of("main", f"main/backups/{BID}/base/0000.tar.zst") == BID
    assert layout.backup_id_of("main", "main/backups/stray") is None
    assert layout.is_manifest_key(f"main/backups/{BID}/manifest.json")
    assert not layout.is_manifest_key(f"main/backups/{BID}/manifest.json.age")
    assert layout.is_expired_marker_key(f"main/backups/{BID}/expired.json")
    assert layout.name_in_backup("main", BID, f"main/backups/{BID}/config/pg_hba.conf.zst") == "config/pg_hba.conf.zst"
    assert layout.is_source_folder("main/") and not layout.is_source_folder(".probe/")
    assert layout.is_record_key("main/drills/x.json") and not layout.is_record_key("main/drills/x.tmp")
    assert layout.lease_generation("main/locks/backup.", "main/locks/backup.000000000012.json") == 12
    assert layout.lease_generation("main/locks/backup.", "main/locks/backup.x.json") is None
    assert layout.lease_name_and_generation("main", "main/locks/wal.forget.000000000003.json") == ("wal.forget", 3)
    assert layout.lease_name_and_generation("main", "main/locks/readers/h-1-ab.json") is None
    assert layout.lease_name_and_generation(None, "locks/gc.000000000001") is None
    assert layout.epoch_of_prefix("main", "main/epochs/3/") == 3
    assert layout.epoch_of_prefix("main", "main/epochs/1/") is None
    sha = "ab" * 32
    assert layout.split_wal_key("main", f"main/wal/0000000100000000/000000010000000000000003-{sha}.zst.age") == \
        layout.WalKey("0000000100000000", "000000010000000000000003", sha, ".zst", True)
    assert layout.split_wal_key("main", f"main/wal/00000002.history-{sha}") == \
        layout.WalKey("", "00000002.history", sha, None, False)
    assert layout.split_wal_key("main", "main/wal/segment_size.json") is None


@pytest.mark.parametrize(("name", "part", "tablespace"), [
    ("base.tar.zst", True, None),
    ("base/0003.tar.zst.age", True, None),
    ("base/0003.tar", True, None),
    ("tablespaces/16384.tar.lz4", True, "16384"),
    ("tablespaces/16384/0000.tar.gz", True, "16384"),
    ("backup_manifest.zst", False, None),
    ("config/postgresql.conf", False, None),
    ("base.tarball", False, None),
])
def test_tar_parts_of_every_layout_version_are_recognised(name: str, part: bool, tablespace: str | None) -> None:
    assert layout.is_tar_part(name) is part
    assert layout.tar_part_tablespace(name) == tablespace


# -- no other module spells a key ---------------------------------------------------------------------

PACKAGE = Path(layout.__file__).resolve().parents[1]
# Fragments only a repository key contains; error messages and docstrings may name keys in prose.
KEY_FRAGMENTS = ("/backups/", "manifest.json", "expired.json", "source.json", "backupctl.json", "/locks/",
                 "locks/", "/pins/", "/drills/", "/verifications/", ".probe/", "/wal/", "/epochs/",
                 "segment_size.json")


def _spelled_keys(text: str, name: str) -> list[str]:
    """Every string constant (f-string parts included) that holds a key fragment, docstrings excepted."""
    tree = ast.parse(text, name)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return sorted(f"{name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and any(fragment in node.value for fragment in KEY_FRAGMENTS))


def test_no_module_but_the_layout_spells_a_repository_key() -> None:
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if p != Path(layout.__file__).resolve()]
    assert len(modules) > 40
    spelled = [found for path in modules for found in _spelled_keys(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert spelled == []


def test_the_check_finds_a_spelled_key() -> None:
    """The check above is only worth something if it sees keys in f-strings and plain strings alike."""
    source = ('def f(s, i):\n    """<source>/backups/<id>/manifest.json"""\n'
              '    return f"{s}/backups/{i}/",\\\n"locks/"\n')
    assert _spelled_keys(source, "m.py") == ["m.py:3: '/backups/'", "m.py:4: 'locks/'"]
