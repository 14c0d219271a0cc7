"""Stub backend server on uvloop + httptools: answers any path with a small body naming its
id, fast enough never to be the bottleneck of a benchmark, and fails on demand.

This module owns the HTTP side: `StubServer` (behaviour, pre-built responses and counters shared by
a stub's connections) and `StubProtocol` (one connection, carrying out each
`behaviour.Action`). With a plain behaviour (a status, no latency, no failures) a response is
pre-built bytes and one write. Every response carries ``X-Stub-Id``, and a response after
which the stub closes the connection carries ``Connection: close``.

``python -m stubs.server --port 9001 --id s1`` runs a stub; the process around the server
(flags, pid file, control socket, registration, signals) is stubs/process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections import deque
from typing import Any

import httptools

from bunancer.core.errors import STATUS_LINES  # one status-line table for proxy and stubs

from .behaviour import (
    HEALTH_PATH,
    Action,
    Behaviour,
    CloseMidBody,
    Hang,
    Reset,
    Respond,
    SlowBody,
)
from .log import StubLog

KEEP, CLOSE, KEEP10 = 0, 1, 2  # connection handling of a response: its header variant
NO_BODY = (204, 304)
MAX_QUEUED = 32  # pipelined requests waiting behind a slow one before reading pauses
HEALTH_PREFIX = HEALTH_PATH.encode()  # the fast path leaves anything like it to decide()

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\nX-Stub-Id: %s\r\n\r\n"
)


def build_body(stub_id: str, size: int) -> bytes:
    """The id line, padded with x to `size` bytes when asked."""
    body = f"{stub_id}\n".encode()
    if size > len(body):
        body += b"x" * (size - len(body) - 1) + b"\n"
    return body


def build_head(stub_id: bytes, status: int, length: int | None, connection: int) -> bytes:
    head = STATUS_LINES[status] + b"Content-Type: text/plain\r\nX-Stub-Id: %s\r\n" % stub_id
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    if connection == CLOSE:
        head += b"Connection: close\r\n"
    elif connection == KEEP10:
        head += b"Connection: keep-alive\r\n"  # an HTTP/1.0 client closes without it
    return head + b"\r\n"


class StubServer:
    """State shared by a stub's connections: behaviour, pre-built responses, counters."""

    def __init__(self, stub_id: str, behaviour: Behaviour, seed: int | None = None) -> None:
        self.id = stub_id
        self.id_bytes = stub_id.encode()
        self.rng = random.Random(seed)
        self.started_at = time.time()
        self.port = 0
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.failures: dict[str, int] = {}
        self.connections_total = 0
        self.connections: set[StubProtocol] = set()
        self.access_log: StubLog | None = None
        self._heads: dict[tuple[int, int | None, int], bytes] = {}
        self.behaviour = behaviour
        self.body = b""
        self.plain: tuple[bytes, bytes, bytes] | None = None
        self.plain_status = 200
        self.set_behaviour(behaviour)

    def set_behaviour(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.body = build_body(self.id, behaviour.size)
        self.plain_status = behaviour.status
        if behaviour.is_plain:
            self.plain = (
                self.response(behaviour.status, self.body, KEEP),
                self.response(behaviour.status, self.body, CLOSE),
                self.response(behaviour.status, self.body, KEEP10),
            )
        else:
            self.plain = None

    def head(self, status: int, length: int | None, connection: int) -> bytes:
        key = (status, length, connection)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) > 256:
                self._heads.clear()
            head = self._heads[key] = build_head(self.id_bytes, status, length, connection)
        return head

    def response(self, status: int, body: bytes, connection: int) -> bytes:
        if status in NO_BODY:
            return self.head(status, None, connection)
        return self.head(status, len(body), connection) + body

    def body_of(self, action: Respond | SlowBody | CloseMidBody) -> bytes:
        if isinstance(action, Respond) and action.health:
            # Under health "auto" any status can come here, not only 200 and 503.
            return b"ok\n" if action.status < 400 else b"fail\n"
        if action.size == self.behaviour.size:
            return self.body
        return build_body(self.id, action.size)

    def count(self, status: int | str, failure: str | None = None) -> None:
        self.requests += 1
        if isinstance(status, int):
            self.statuses[status] = self.statuses.get(status, 0) + 1
        if failure is not None:
            self.failures[failure] = self.failures.get(failure, 0) + 1

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": dict(sorted(self.failures.items())),
            "connections_total": self.connections_total,
            "connections_open": len(self.connections),
            "uptime": round(time.time() - self.started_at, 3),
        }


class StubProtocol(asyncio.Protocol):
    """One client connection.

    Plain behaviour: the pre-built response is written from `on_message_complete` (one
    write, no task). Anything that waits (latency, slow bodies) runs in one worker task per
    connection that answers queued pipelined requests in order.
    """

    __slots__ = (
        "hung",
        "loop",
        "parser",
        "queue",
        "stub",
        "transport",
        "url",
        "worker",
    )

    def __init__(self, stub: StubServer) -> None:
        self.stub = stub
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url: bytes | None = None
        self.queue: deque[tuple[bytes, bytes, int, Action | None]] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.hung = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stub.connections_total += 1
        self.stub.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stub.connections.discard(self)
        if self.worker is not None:
            self.worker.cancel()

    def pause_writing(self) -> None:
        # Stop taking requests while the client does not read its answers.
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        if len(self.queue) < MAX_QUEUED:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.hung:
            return  # a hung connection ignores everything until the client leaves
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(BAD_REQUEST % self.stub.id_bytes)
            self.transport.close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url = url if self.url is None else self.url + url

    def on_message_complete(self) -> None:
        url, self.url = self.url or b"/", None
        if self.hung:
            return  # pipelined after a request that closes or hangs the connection
        parser = self.parser
        if not parser.should_keep_alive():
            connection = CLOSE
        elif parser.get_http_version() == "1.0":
            connection = KEEP10
        else:
            connection = KEEP
        method = parser.get_method()
        stub = self.stub
        plain = stub.plain
        if (
            plain is not None
            and self.worker is None
            and method != b"HEAD"
            and not url.startswith(HEALTH_PREFIX)
        ):
            # The fast path: pre-built bytes, one write.
            transport = self.transport
            assert transport is not None
            transport.write(plain[connection])
            stub.requests += 1
            status = stub.plain_status
            stub.statuses[status] = stub.statuses.get(status, 0) + 1
            if stub.access_log is not None:
                stub.access_log.add(method, url, status, 0.0)
            if connection == CLOSE:
                self._close_after_response()
            return
        self._general(method, url, connection)

    # -- everything else ---------------------------------------------------------------------

    def _close_after_response(self) -> None:
        assert self.transport is not None
        self.hung = True  # ignore anything pipelined after a request that closes
        self.transport.close()

    def _general(self, method: bytes, url: bytes, connection: int) -> None:
        if self.worker is not None:
            self.queue.append((method, url, connection, None))
            if len(self.queue) >= MAX_QUEUED:
                assert self.transport is not None
                self.transport.pause_reading()
            return
        action = self.stub.behaviour.decide(self.stub.rng, _path(url))
        if isinstance(action, Respond) and action.delay == 0:
            self._respond(method, url, connection, action, 0.0)
            return
        self.queue.append((method, url, connection, action))
        self.worker = self.loop.create_task(self._work())

    async def _work(self) -> None:
        try:
            while self.queue and not self.hung:
                method, url, connection, action = self.queue.popleft()
                if len(self.queue) < MAX_QUEUED and self.transport is not None:
                    self.transport.resume_reading()
                if action is None:
                    action = self.stub.behaviour.decide(self.stub.rng, _path(url))
                await self._carry_out(method, url, connection, action)
        finally:
            self.worker = None

    async def _carry_out(self, method: bytes, url: bytes, connection: int, action: Action) -> None:
        stub = self.stub
        transport = self.transport
        assert transport is not None
        started = self.loop.time()
        if isinstance(action, Hang):
            stub.count("hang", "hang")
            self._log(method, url, "hang", 0.0)
            self.hung = True
            self.queue.clear()
            return
        delay = action.delay
        if delay:
            await asyncio.sleep(delay)
        if transport.is_closing():
            self._log(method, url, 499, self.loop.time() - started)  # the client left
            return
        if isinstance(action, Respond):
            self._respond(method, url, connection, action, self.loop.time() - started)
        elif isinstance(action, Reset):
            stub.count("reset", "reset")
            self._log(method, url, "reset", self.loop.time() - started)
            _reset(transport)
            self.hung = True
        elif isinstance(action, CloseMidBody):
            body = b"" if method == b"HEAD" or action.status in NO_BODY else stub.body_of(action)
            transport.write(stub.head(action.status, len(body), KEEP) + body[: len(body) // 2])
            stub.count(action.status, "close")
            self._log(method, url, "close", self.loop.time() - started)
            self._close_after_response()
        else:
            await self._slow_body(method, url, connection, action, started)

    async def _slow_body(
        self, method: bytes, url: bytes, connection: int, action: SlowBody, started: float
    ) -> None:
        stub = self.stub
        transport = self.transport
        assert transport is not None
        body = b"" if method == b"HEAD" or action.status in NO_BODY else stub.body_of(action)
        length = None if action.status in NO_BODY else len(body)
        transport.write(stub.head(action.status, length, connection))
        pieces = max(min(action.pieces, len(body)), 1)
        step = -(-len(body) // pieces)  # ceiling division
        for offset in range(0, len(body), step):
            await asyncio.sleep(action.interval)
            if transport.is_closing():
                self._log(method, url, 499, self.loop.time() - started)
                return
            transport.write(body[offset : offset + step])
        stub.count(action.status, "slow")
        self._log(method, url, action.status, self.loop.time() - started)
        if connection == CLOSE:
            self._close_after_response()

    def _respond(
        self, method: bytes, url: bytes, connection: int, action: Respond, latency: float
    ) -> None:
        stub = self.stub
        assert self.transport is not None
        body = stub.body_of(action)
        if method == b"HEAD" and action.status not in NO_BODY:
            self.transport.write(stub.head(action.status, len(body), connection))
        else:
            self.transport.write(stub.response(action.status, body, connection))
        stub.count(action.status, "5xx" if action.failed else None)
        self._log(method, url, action.status, latency)
        if connection == CLOSE:
            self._close_after_response()

    def _log(self, method: bytes, url: bytes, status: int | str, latency: float) -> None:
        if self.stub.access_log is not None:
            self.stub.access_log.add(method, url, status, latency)

    def shutdown(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _path(url: bytes) -> str:
    return url.partition(b"?")[0].decode("latin-1")


def _reset(transport: asyncio.Transport) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


if __name__ == "__main__":
    # `python -m stubs.server` stays the command (pid files are matched on it); the process
    # around the server is stubs/process.py, which imports this module as stubs.server.
    from .process import main

    main()
