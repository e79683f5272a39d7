"""WAL names and LSNs (``wal.names``): the one home of PostgreSQL's arithmetic, and its one-line errors."""

from __future__ import annotations

import pytest

from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.services.pitr import target_from_options
from backupctl.wal.names import LsnError, format_lsn, parse_lsn, segment_of_lsn

SEGMENT = 16 * 1024**2


def test_lsns_round_trip() -> None:
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert format_lsn(parse_lsn(" 0/3000028 ")) == "0/3000028"
    assert segment_of_lsn(1, parse_lsn("1/A3000028"), SEGMENT) == "0000000100000001000000A3"


@pytest.mark.parametrize("text", ["", "0/", "/1", "0-3000028", "0/3000028x", "123456789/0", "g/0"])
def test_a_malformed_lsn_is_one_line_of_the_products_error(text: str) -> None:
    with pytest.raises(LsnError) as caught:
        parse_lsn(text)
    assert isinstance(caught.value, BackupctlError)
    assert "\n" not in str(caught.value) and repr(text) in str(caught.value)


@pytest.mark.parametrize("typo", ["0/30000ZZ", "0x3000028", "3000028", "0//1"])
def test_a_typod_target_lsn_is_a_usage_error_of_one_line(typo: str) -> None:
    with pytest.raises(ConfigError) as caught:
        target_from_options(None, typo, None, None, False)
    message = str(caught.value)
    assert message.startswith(f"--target-lsn {typo!r} is not an LSN") and "\n" not in message
    assert caught.value.exit_code == 2


def test_a_target_lsn_is_normalised() -> None:
    assert target_from_options(None, "0/0300abc", None, None, False).value == "0/300ABC"
