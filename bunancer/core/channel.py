"""The control process's line to one worker: messages as `marshal`ed dicts, each behind its
length (4 bytes, big-endian), over a socketpair. Writes never wait: a worker must not block
on the control process, nor the control process on a worker.

marshal, not JSON: both ends are the same interpreter (the worker is started with
`sys.executable`) and trust each other, and marshal is built in, so a worker loads no JSON
library (orjson: 1 MiB of each worker's memory)."""

from __future__ import annotations

import asyncio
import marshal
import struct
from collections.abc import Callable
from typing import Any

_LENGTH = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024  # a snapshot of a very large registry; beyond: a broken peer


class Channel(asyncio.Protocol):
    def __init__(
        self, on_message: Callable[[dict[str, Any]], None], on_close: Callable[[], None]
    ) -> None:
        self.on_message = on_message
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 4:
            (length,) = _LENGTH.unpack_from(buffer)
            if length > MAX_MESSAGE:
                self.close()
                return
            if len(buffer) < 4 + length:
                return
            message = marshal.loads(buffer[4 : 4 + length])
            del buffer[: 4 + length]
            self.on_message(message)

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is None or self.closed:
            return
        body = marshal.dumps(message)
        self.transport.write(_LENGTH.pack(len(body)) + body)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_close()
