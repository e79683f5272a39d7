"""TarExtractor hands every written byte to the disk as it goes, so the restore's final sync has little left."""

from __future__ import annotations

import io
import itertools
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from backupctl.postgres import tarstream
from backupctl.postgres.tarstream import TarExtractor


class _Hasher:
    def update(self, data: Any) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


class _AcceptAll:
    def begin(self, name: bytes, size: int) -> Any:
        return _Hasher()

    def end(self, name: bytes, size: int, hasher: Any) -> None:
        pass


def _archive(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_every_file_is_handed_to_the_disk_in_steps_and_at_its_end(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    def record(fd: int, offset: int, length: int) -> None:
        calls.append((os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[1], offset, length))

    monkeypatch.setattr(tarstream, "WRITEBACK_STEP", 4096)
    monkeypatch.setattr(tarstream, "start_writeback", record)
    big = os.urandom(3 * 4096 + 100)
    data = _archive({"big": big, "small": b"x" * 10, "empty": b""})
    extractor = TarExtractor(tmp_path, _AcceptAll())
    try:
        for start in range(0, len(data), 1000):  # pieces that do not line up with the steps
            extractor.write(data[start:start + 1000])
        extractor.finish()
    finally:
        extractor.close()
    assert (tmp_path / "big").read_bytes() == big
    big_calls = [(offset, length) for name, offset, length in calls if name == "big"]
    # contiguous ranges from 0, each at least a step, and the rest (length 0: to the end) when the file ends
    assert big_calls[0][0] == 0 and big_calls[-1][1] == 0
    for (offset, length), (following, _) in itertools.pairwise(big_calls):
        assert length >= 4096 and following == offset + length
    assert len(big_calls) >= 3  # during the file, not only at its end
    assert ("small", 0, 0) in calls and ("empty", 0, 0) in calls


def test_start_writeback_is_harmless_on_any_descriptor(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"data")
        tarstream.start_writeback(fd, 0, 0)
    finally:
        os.close(fd)
    tarstream.start_writeback(-1, 0, 0)  # EBADF is ignored: the final sync does the work
    assert (tmp_path / "f").read_bytes() == b"data"
