"""What one client connection can make the web server hold before anything is answered.

The connection's Protocol is driven as the event loop drives it: bytes go into the buffer
`get_buffer` returns and `buffer_updated` is called, read after read, for as long as the
transport is reading (a paused transport is read no further, as a real socket's would not
be). So each test sees exactly how much the server took off the socket and queued. The
caps on connections and refused bodies are tested over real sockets in
tests/integration/test_admin_exposure.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import uvloop

from bunancer.web.app import App, HTTPError, Request, Response, StreamResponse, text_response
from bunancer.web.server import _Census, _Connection, _Settings
from tests.helpers import wait_until

MAX_BODY = 64 * 1024


class Transport:
    """The parts of an asyncio transport the server uses, recording what it was told."""

    def __init__(self) -> None:
        self.reading = True
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.written += part

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class Wire:
    """One connection to the server's Protocol and the bytes the client has sent so far."""

    def __init__(self, app: App) -> None:
        loop = asyncio.get_running_loop()
        settings = _Settings(MAX_BODY, 10.0, 30.0, 256, 32)
        self.connection = _Connection(app, settings, _Census(), loop)
        self.transport = Transport()
        self.connection.connection_made(self.transport)  # type: ignore[arg-type]
        self.unread = b""
        self.taken = 0  # bytes the server has read

    def send(self, data: bytes) -> None:
        """What the client sends; the server reads it while it is reading."""
        self.unread += data
        self.deliver()

    def deliver(self) -> None:
        while self.unread and self.transport.reading and not self.transport.closed:
            buffer = self.connection.get_buffer(-1)
            size = min(len(buffer), len(self.unread))
            buffer[:size] = self.unread[:size]
            self.unread = self.unread[size:]
            self.taken += size
            self.connection.buffer_updated(size)

    def answered(self, count: int) -> bool:
        """Whether `count` responses were written (delivering what the server now reads)."""
        self.deliver()
        return bytes(self.transport.written).count(b"HTTP/1.1 ") == count


def post(path: str, size: int) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n"
    return head.encode() + b"x" * size


class Probe:
    def __init__(self) -> None:
        self.heads: list[str] = []  # requests with a body whose head the server parsed
        self.stream: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.release = asyncio.Event()
        self.bodies: list[int] = []

    def app(self) -> App:
        app = App(admission=self.admit)

        @app.router.get("/stream")
        async def stream(request: Request) -> StreamResponse:
            async def chunks() -> AsyncIterator[bytes]:
                while (item := await self.stream.get()) is not None:
                    yield item

            return StreamResponse(chunks())

        @app.router.post("/slow")
        async def slow(request: Request) -> Response:
            await self.release.wait()
            self.bodies.append(len(request.body))
            return text_response("ok")

        return app

    def admit(self, request: Request) -> HTTPError | None:
        self.heads.append(request.path)
        return None


def run(scenario: Any) -> None:
    async def main() -> None:
        async with asyncio.timeout(10.0):
            await scenario()

    uvloop.run(main())


def test_a_read_is_at_most_16_kib() -> None:
    async def scenario() -> None:
        wire = Wire(Probe().app())
        assert len(wire.connection.get_buffer(-1)) == 16 * 1024

    run(scenario)


def test_reading_stops_at_the_first_request_queued_behind_a_stream() -> None:
    async def scenario() -> None:
        probe = Probe()
        wire = Wire(probe.app())
        wire.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        await probe.stream.put(b"first")
        await wait_until(lambda: b"first" in wire.transport.written)
        wire.send(b"".join(post("/slow", 10_000) for _ in range(10)))
        # The first read held one request and part of the next: nothing more is read
        # while the stream lasts (before: 16 requests, 160 KB).
        assert not wire.transport.reading
        assert wire.taken == 16 * 1024 + len(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        assert probe.heads == ["/slow", "/slow"]
        # The stream ends: every request is read and answered, in order, whole.
        probe.release.set()
        await probe.stream.put(None)
        await wait_until(lambda: wire.answered(11))
        assert probe.bodies == [10_000] * 10

    run(scenario)


def test_reading_stops_once_queued_bodies_reach_max_body() -> None:
    async def scenario() -> None:
        probe = Probe()
        wire = Wire(probe.app())
        wire.send(b"".join(post("/slow", 20_000) for _ in range(12)))
        assert not wire.transport.reading
        # In the handler: one; queued: bodies up to MAX_BODY, plus what the last read held.
        assert wire.taken <= 20_100 + MAX_BODY + 20_100 + 16 * 1024
        assert len(probe.heads) <= 6  # before: all 12 (16 may queue)
        probe.release.set()
        await wait_until(lambda: wire.answered(12))
        assert probe.bodies == [20_000] * 12

    run(scenario)
