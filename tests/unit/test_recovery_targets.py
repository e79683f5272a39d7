"""Recovery targets from the command line's options: parsed, normalised, and refused as usage errors that name
the option."""

from __future__ import annotations

from typing import Any

import pytest

from backupctl.core.errors import ConfigError
from backupctl.services import pitr


def test_targets_are_parsed_and_normalised() -> None:
    assert pitr.target_from_options(None, " 0/3000028 ", None, None, False).value == "0/3000028"
    assert pitr.target_from_options(None, "1/a3000028", None, None, False).value == "1/A3000028"
    assert pitr.target_from_options(None, None, "750", None, False).value == "750"
    assert pitr.target_from_options(None, None, str(2**40 + 7), None, False).value == str(2**40 + 7)
    assert pitr.target_from_options(None, None, None, "x" * 63, False).value == "x" * 63
    assert pitr.target_from_options(None, None, None, None, False, "2").timeline == "2"
    assert pitr.target_from_options(None, None, None, None, False, "current").timeline == "current"
    assert pitr.target_from_options(None, None, None, None, False).kind == "end"


@pytest.mark.parametrize(("option", "value", "words"), [
    ("lsn", "xyz", "--target-lsn 'xyz' is not an LSN"),
    ("lsn", "0/", "--target-lsn '0/' is not an LSN"),
    ("lsn", "", "--target-lsn '' is not an LSN"),
    ("xid", "abc", "--target-xid 'abc' is not a transaction id"),
    ("xid", "0", "--target-xid '0' is not a transaction id"),
    ("xid", "-5", "--target-xid '-5' is not a transaction id"),
    ("xid", str(2**64), f"--target-xid '{2**64}' is not a transaction id"),
    ("name", "", "--target-name is empty"),
    ("name", "é" * 32, "--target-name is 64 bytes long"),
    ("timeline", "foo", "--target-timeline 'foo'"),
    ("timeline", "0", "--target-timeline '0'"),
    ("timeline", "-1", "--target-timeline '-1'"),
    ("timeline", str(2**32), f"--target-timeline '{2**32}'"),
])
def test_bad_targets_are_usage_errors(option: str, value: str, words: str) -> None:
    given: dict[str, Any] = {"time": None, "lsn": None, "xid": None, "name": None, "immediate": False}
    if option == "timeline":
        given["timeline"] = value
    else:
        given[option] = value
    with pytest.raises(ConfigError) as error:
        pitr.target_from_options(**given)
    assert words in str(error.value) and "\n" not in str(error.value)
