"""A stub's access log: one line per request (time, method, path, status, latency) and
``[stub]`` event lines (start, registration, behaviour changes, stop).

Requests only append a tuple, so the hot path stays cheap; lines are formatted and written
in batches every `LOG_FLUSH_INTERVAL` seconds. The file is rotated to ``<name>.1`` at
`LOG_CAP` bytes (1 MiB), keeping one old copy.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from .state import LOG_CAP

LOG_FLUSH_INTERVAL = 0.25


class StubLog:
    """A stub's log: one line per request (time, method, path, status, latency) and its
    ``[stub]`` events, written in batches.

    Requests only append a tuple; formatting and writing happen every
    `LOG_FLUSH_INTERVAL` seconds. The file is rotated to ``.1`` at `cap` bytes.
    """

    def __init__(self, path: Path, cap: int = LOG_CAP) -> None:
        self.path = path
        self.cap = cap
        self.entries: list[tuple[float, bytes, bytes, int | str, float]] = []
        self.file = self._open()
        self._second = -1
        self._stamp = ""

    def _open(self) -> BinaryIO:
        return os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")

    def add(self, method: bytes, url: bytes, status: int | str, latency: float) -> None:
        self.entries.append((time.time(), method, url, status, latency))

    def event(self, text: str) -> None:
        """A stub event (registration, behaviour change) among the request lines."""
        self.flush()
        self._write(f"{self._time(time.time())} [stub] {text}\n".encode())

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}"

    def flush(self) -> None:
        if not self.entries:
            return
        entries, self.entries = self.entries, []
        lines = [
            f"{self._time(at)} {method.decode('latin-1')} {url[:200].decode('latin-1')} "
            f"{status} {latency * 1000:.1f}ms\n"
            for at, method, url, status, latency in entries
        ]
        self._write("".join(lines).encode())

    def _write(self, data: bytes) -> None:
        try:
            if self.file.tell() and self.file.tell() + len(data) > self.cap:
                self.file.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self.file = self._open()
            self.file.write(data)
            self.file.flush()
        except OSError as error:
            print(f"stub: access log {self.path}: {error.strerror}", file=sys.stderr)

    def close(self) -> None:
        self.flush()
        self.file.close()


def flush_periodically(loop: asyncio.AbstractEventLoop, log: StubLog) -> None:
    """Flush `log` every `LOG_FLUSH_INTERVAL` seconds for as long as `loop` runs."""

    def tick() -> None:
        log.flush()
        loop.call_later(LOG_FLUSH_INTERVAL, tick)

    loop.call_later(LOG_FLUSH_INTERVAL, tick)
