"""Running PostgreSQL's client tools (pg_dump, pg_restore, psql, ...) as streaming child processes.

Their stdout or stdin is a pipe the pipeline reads or feeds; their stderr is drained by a thread into a
bounded tail, so a chatty tool can neither block nor fill memory, and a failure can be reported as one
line with the tool's own last words. A child still running when the block is left (an error, a
signal) is killed and reaped, so no orphan keeps writing.
"""

from __future__ import annotations

import collections
import contextlib
import io
import subprocess
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

from backupctl.core.errors import BackupctlError
from backupctl.core.log import get_logger

log = get_logger(__name__)


class ToolProcess:
    """One child process with a piped stdout (``read=True``) or stdin (``read=False``)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], what: str, *, read: bool = True,
                 stdout: IO[bytes] | int | None = None) -> None:
        self.what = what
        self.argv = list(argv)
        log.debug("starting tool", argv=self.argv)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                stdin=None if read else subprocess.PIPE,
                stdout=subprocess.PIPE if read else (stdout if stdout is not None else subprocess.DEVNULL),
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise BackupctlError(f"{what}: cannot run {self.argv[0]}: {exc.strerror}") from exc
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_thread = threading.Thread(target=self._drain, daemon=True)
        self._stderr_thread.start()

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._tail.append(line)

    def stderr_lines(self) -> list[str]:
        return list(self._tail)

    def wait(self) -> None:
        """Wait for the tool to end; a non-zero exit becomes one line with its last error message."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        code = self.proc.wait()
        self._stderr_thread.join()
        if code != 0:
            errors = [line for line in self._tail if "error" in line.lower() or "fatal" in line.lower()]
            detail = (errors or list(self._tail) or ["no message"])[-1]
            raise BackupctlError(f"{self.what} failed (exit {code}): {detail}")

    def __enter__(self) -> ToolProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        self._stderr_thread.join(timeout=5)


def run_tool(argv: Sequence[str], env: dict[str, str], what: str, stdin: bytes | None = None) -> str:
    """Run a short tool to the end and return its stdout as text; failures as for ``ToolProcess``."""
    try:
        proc = subprocess.run(list(argv), env=env, input=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise BackupctlError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise BackupctlError(f"{what} failed (exit {proc.returncode}): {(lines or ['no message'])[-1]}")
    return proc.stdout.decode(errors="replace")



class ProcessSink(io.RawIOBase):
    """Feeds a child's stdin; once the child closes it (it read all it wanted), the rest is discarded.

    The pipeline keeps reading to the end either way, so the object's checksum is still proven, and
    the child's exit status (from ``ToolProcess.wait``) is what reports its success.
    """

    def __init__(self, tool: ToolProcess) -> None:
        self._stdin: IO[bytes] | None = tool.stdin

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._stdin is not None:
            try:
                self._stdin.write(data)
            except BrokenPipeError:
                self._stdin = None
        return len(data)
