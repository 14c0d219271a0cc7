"""Access log: one line per request, off by default, written in batches off the hot path.

Lines are formatted when a request ends and appended to a buffer; a timer writes the
buffer every 0.2 s (sooner past 64 KiB) with one `os.write` (to standard output, in
pieces of whole lines of at most PIPE_BUF bytes, which a pipe takes whole: the workers of
`--workers N` share it). Formats: `combined` (Apache/
nginx combined, then `upstream=HOST:PORT upstream_us=N us=N`: the upstream server, the time
from sending the request to the last response byte and the total time, in microseconds;
-1 when no upstream answered) and `json` (one object per line, times in seconds). The
timestamp text is built once per second, not once per request.
"""

from __future__ import annotations

import asyncio
import os
import select
import sys
import time
from collections.abc import Sequence
from typing import IO

import orjson

FLUSH_INTERVAL = 0.2
FLUSH_BYTES = 64 * 1024


class AccessLog:
    __slots__ = (
        "_buffer",
        "_file",
        "_handle",
        "_loop",
        "_size",
        "_stamp",
        "_stamp_second",
        "fd",
        "json",
        "path",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, fmt: str = "combined") -> None:
        if fmt not in ("combined", "json"):
            raise ValueError(f"unknown access log format {fmt!r} (combined or json)")
        self._loop = loop
        self.path = path
        self.json = fmt == "json"
        self._file: IO[bytes] | None = None
        if path == "-":
            self.fd = sys.stdout.fileno()
        else:
            self._file = open(path, "ab")  # noqa: SIM115 - kept open for the process's life
            self.fd = self._file.fileno()
        self._buffer: list[bytes] = []
        self._size = 0
        self._handle: asyncio.TimerHandle | None = None
        self._stamp_second = -1
        self._stamp = b""

    def _timestamp(self, now: float) -> bytes:
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second)).encode()
        return self._stamp

    def add(
        self,
        client: bytes,
        method: bytes,
        target: bytes,
        http11: bool,
        status: int,
        bytes_out: int,
        headers: Sequence[tuple[bytes, bytes]],
        upstream: bytes,
        up_started: float,
        started: float,
    ) -> None:
        """One request (positional arguments, bytes: this runs once per request). The times
        are `perf_counter` values: the request began and went upstream (0: never did)."""
        ended = time.perf_counter()
        upstream_time = ended - up_started if up_started else -1.0
        total_time = ended - started
        referer, user_agent = referer_and_agent(headers)
        now = time.time()
        if int(now) != self._stamp_second:
            self._timestamp(now)
        if self.json:
            line = orjson.dumps(
                {
                    "time": now,
                    "client": client.decode(),
                    "method": method.decode("latin-1"),
                    "target": target.decode("latin-1"),
                    "status": status,
                    "bytes": bytes_out,
                    "referer": referer.decode("latin-1") if referer else None,
                    "user_agent": user_agent.decode("latin-1") if user_agent else None,
                    "upstream": upstream.decode() or None,
                    "upstream_time": round(upstream_time, 6) if upstream_time >= 0 else None,
                    "time_total": round(total_time, 6),
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
        else:
            # Times as whole microseconds: formatting integers costs a fraction of floats.
            line = b'%s - - [%s] "%s %s %s" %d %d "%s" "%s" upstream=%s upstream_us=%d us=%d\n' % (
                client,
                self._stamp,
                method,
                _quote(target),
                b"HTTP/1.1" if http11 else b"HTTP/1.0",
                status,
                bytes_out,
                _quote(referer),
                _quote(user_agent),
                upstream or b"-",
                int(upstream_time * 1_000_000) if upstream_time >= 0 else -1,
                int(total_time * 1_000_000),
            )
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._handle is None:
            self._handle = self._loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        self._size = 0
        # A file opened for appending takes each write whole, whoever else appends (the
        # workers); a pipe only up to PIPE_BUF bytes: so whole lines in pieces no bigger.
        limit = select.PIPE_BUF if self._file is None else 0
        try:
            for data in _pieces(lines, limit):
                while data:
                    written = os.write(self.fd, data)
                    data = data[written:]
        except BlockingIOError:
            pass  # a non-blocking stdout that is full: drop rather than stall the proxy
        except OSError as error:
            print(f"bunancer: access log {self.path}: {error.strerror}", file=sys.stderr)

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()


def _pieces(lines: list[bytes], limit: int) -> list[bytes]:
    """`lines` joined into pieces of at most `limit` bytes (0: one piece); a longer line is a
    piece of its own."""
    if not limit:
        return [b"".join(lines)]
    pieces: list[bytes] = []
    piece: list[bytes] = []
    size = 0
    for line in lines:
        if piece and size + len(line) > limit:
            pieces.append(b"".join(piece))
            piece, size = [], 0
        piece.append(line)
        size += len(line)
    pieces.append(b"".join(piece))
    return pieces


def _quote(value: bytes | None) -> bytes:
    if not value:
        return b"-"
    # Integer membership is a memchr; `b'"' in value` costs ten times more (callgrind).
    if 34 not in value and 92 not in value:  # '"' and '\\'
        return value
    return value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')


def referer_and_agent(
    headers: Sequence[tuple[bytes, bytes]],
) -> tuple[bytes | None, bytes | None]:
    """The request's Referer and User-Agent, for the combined format."""
    referer = user_agent = None
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"user-agent":
            user_agent = value
        elif len(name) == 7 and name.lower() == b"referer":
            referer = value
    return referer, user_agent
