"""A real browser for the HTML report: Debian's chromium, headless, and a PNG reader to look at what it drew.

Screenshots are test artefacts a person can open: each is kept in ``$BACKUPCTL_TEST_ARTEFACTS`` when set,
else in ``artefacts/`` under pytest's base temporary directory (``/tmp/pytest-of-$USER/pytest-N/artefacts``,
the newest N being the last run). Without chromium the test is skipped, with the reason; in CI (CI=true) it
fails, like a missing PostgreSQL major (.ci/run installs the ``chromium`` package).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

WINDOW = (1280, 900)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def require_chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("chromium is required in CI (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def artefacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots are kept for people to look at (see the module docstring)."""
    chosen = os.environ.get("BACKUPCTL_TEST_ARTEFACTS")
    directory = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "artefacts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot(page: Path, png: Path) -> Path:
    """Render ``page`` in headless chromium (as root it needs --no-sandbox) to ``png``. Scripts stay on:
    headless chromium's screenshot needs them (--blink-settings=scriptEnabled=false writes no file), and
    the report has none to run (its test checks the page for script)."""
    chromium = require_chromium()
    profile = png.parent / f".chromium-{png.stem}"  # its own profile: no state shared with another run
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
               f"--user-data-dir={profile}", "--hide-scrollbars", f"--screenshot={png}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", page.absolute().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0 and png.is_file(), f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return png


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced truecolour PNG, such as chromium
    writes: enough to ask which colours a screenshot holds without an imaging library."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    position, chunks, header = len(PNG_SIGNATURE), [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format in {path}"
    pixel = 4 if colour == 6 else 3
    raw = zlib.decompress(b"".join(chunks))
    stride = width * pixel
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - pixel] if i >= pixel else 0
            up, corner = previous[i], previous[i - pixel] if i >= pixel else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [_rgb(r, pixel) for r in rows]


def _rgb(row: bytes, pixel: int) -> bytes:
    """A row as RGB triplets (alpha dropped)."""
    if pixel == 3:
        return row
    return b"".join(row[i:i + 3] for i in range(0, len(row), 4))


def colours(rows: list[bytes]) -> dict[tuple[int, int, int], int]:
    """How many pixels have each colour."""
    counts: dict[tuple[int, int, int], int] = {}
    for row in rows:
        for i in range(0, len(row), 3):
            rgb = (row[i], row[i + 1], row[i + 2])
            counts[rgb] = counts.get(rgb, 0) + 1
    return counts


def hex_colour(text: str) -> tuple[int, int, int]:
    value = int(text.lstrip("#"), 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF
