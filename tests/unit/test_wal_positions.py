"""WAL names, positions, history files and archive keys: the parsing and arithmetic under archiving, moved out of
the integration tests of archiving because they need no server."""

from __future__ import annotations

import pytest

from backupctl.wal.listing import parse_key
from backupctl.wal.names import (
    WalNameError,
    format_lsn,
    lsn_to_segno,
    parse_history,
    parse_lsn,
    parse_wal_name,
    segment_name,
    segment_of_lsn,
    segno_to_lsn,
    timeline_ranges,
)

SEGMENT = 16 * 1024**2


def test_names_and_positions() -> None:
    name = parse_wal_name("0000000200000001000000A3")
    assert (name.timeline, name.log, name.seg, name.kind) == (2, 1, 0xA3, "segment")
    assert name.segno(SEGMENT) == 0x1A3 and name.directory == "0000000200000001"
    assert segment_name(2, 0x1A3, SEGMENT) == "0000000200000001000000A3"
    assert segment_name(1, 0x1001, 1024**2) == "000000010000000100000001"  # 4096 segments per log
    assert parse_lsn("1/A3000028") == 0x1A3000028 and format_lsn(0x1A3000028) == "1/A3000028"
    assert segment_of_lsn(3, parse_lsn("0/5000000"), SEGMENT) == "000000030000000000000005"
    assert lsn_to_segno(segno_to_lsn(77, SEGMENT) + 5, SEGMENT) == 77
    assert parse_wal_name("00000003.history").kind == "history"
    assert parse_wal_name("000000010000000000000002.00000028.backup").offset == 0x28
    assert parse_wal_name("000000010000000000000002.partial").segment == "000000010000000000000002"
    for bad in ("foo", "000000000000000000000001", "00000001000000000000000g", "00000000.history",
                "000000010000000000001000", "000000010000000000000001.gz", "../000000010000000000000001"):
        with pytest.raises(WalNameError):
            parse_wal_name(bad)


def test_history_and_keys() -> None:
    text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n"
    history = parse_history(text, 3)
    assert history == [(1, 0x3000158), (2, 0x5000000)]
    assert timeline_ranges(history, 3, SEGMENT) == [(1, 0, 2), (2, 3, 4), (3, 5, None)]
    key = "main/wal/0000000100000000/000000010000000000000003-" + "ab" * 32 + ".zst.age"
    parsed = parse_key("main", key)
    assert parsed is not None and parsed.compression == "zstd" and parsed.encrypted
    assert parsed.name.name == "000000010000000000000003" and parsed.sha256 == "ab" * 32
    assert parse_key("main", "main/wal/00000002.history-" + "cd" * 32) is not None
    assert parse_key("main", "main/wal/0000000100000000/00000002.history-" + "cd" * 32) is None
    assert parse_key("main", "main/wal/segment_size.json") is None
