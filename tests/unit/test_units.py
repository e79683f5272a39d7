"""Sizes and durations as text (core.units): the one spelling for people and the exact one for the config."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backupctl.core.options import parse_duration, parse_size
from backupctl.core.units import format_duration, format_size, human_duration, human_seconds, human_size


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (16 * 1024**2, "16.0 MiB"),
    (3 * 1024**3, "3.0 GiB"), (2 * 1024**4, "2.0 TiB"), (5000 * 1024**4, "5000.0 TiB"),
])
def test_a_size_for_people_has_one_decimal_in_the_largest_unit_it_reaches(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0s"), (59.4, "59s"), (60, "1.0m"), (90, "1.5m"), (3600, "1.0h"), (5400, "1.5h"),
    (86400, "1.0d"), (7 * 86400, "7.0d"),
])
def test_a_duration_for_people_is_an_age_in_its_largest_unit(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_a_measured_time_keeps_the_digits_asked_for() -> None:
    assert (human_seconds(1.25), human_seconds(0.123, 2), human_seconds(None)) == ("1.2s", "0.12s", "-")


@pytest.mark.parametrize(("seconds", "text"), [
    (14 * 86400, "14d"), (36 * 3600, "36h"), (90 * 60, "90m"), (45, "45s"), (90, "90s"), (1.5, "1.5s"),
])
def test_a_duration_for_the_config_is_spelled_in_its_largest_whole_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("size", "text"), [
    (16 * 1024**2, "16MiB"), (1024**3, "1GiB"), (1536, "1536"), (512 * 1024, "512KiB"), (7, "7"),
])
def test_a_size_for_the_config_is_spelled_in_the_largest_unit_that_divides_it(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=10**7))
def test_the_config_reads_every_duration_spelling_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=1, max_value=2**50))
def test_the_config_reads_every_size_spelling_back(size: int) -> None:
    assert parse_size(format_size(size)) == size
