"""The per-server keep-alive pool, observed from inside a balancer running in this process.

A real `Balancer` and a real backend run on one uvloop loop here, so the tests can read the
pool's books (idle, total) and the sockets' options while real connections come and go.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools
import pytest
import uvloop

from bunancer.app import Balancer
from bunancer.configfile import build_config
from bunancer.core.connections import ConnectionPool
from bunancer.core.downstream import DownstreamProtocol
from bunancer.core.upstream import UpstreamProtocol
from tests.helpers import wait_until


@dataclass
class BackendBooks:
    opened: int = 0
    open_now: set[asyncio.Transport] = field(default_factory=set)


class CountingBackend(asyncio.Protocol):
    """Answers each request with the serial number of its connection.

    /sleep/MS delays the answer; /then-garbage answers, then writes junk 50 ms later
    (an idle connection that becomes readable); /then-close answers, then closes 50 ms later.
    """

    def __init__(self, books: BackendBooks) -> None:
        self.books = books
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.books.opened += 1
        self.serial = self.books.opened
        self.books.open_now.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.books.open_now.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        loop = asyncio.get_running_loop()
        body = b"%d" % self.serial
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        if self.url.startswith(b"/sleep/"):
            loop.call_later(int(self.url[7:]) / 1000, self.transport.write, response)
            return
        self.transport.write(response)
        if self.url == b"/then-garbage":
            loop.call_later(0.05, self.transport.write, b"garbage")
        elif self.url == b"/then-close":
            loop.call_later(0.05, self.transport.close)


@dataclass
class Setup:
    balancer: Balancer
    books: BackendBooks
    port: int

    @property
    def pool(self) -> ConnectionPool:
        server = next(iter(self.balancer.pools["default"].servers.values()))
        assert isinstance(server.connections, ConnectionPool)
        return server.connections

    async def get(self, path: str = "/") -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), data
        return body


Scenario = Callable[[Setup], Awaitable[None]]


async def _with_setup(upstream: dict[str, object], scenario: Scenario, tmp: str) -> None:
    loop = asyncio.get_running_loop()
    books = BackendBooks()
    backend = await loop.create_server(lambda: CountingBackend(books), "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    config = build_config(
        {
            "state_dir": tmp,
            "listeners": [{"address": "127.0.0.1:0"}],
            # No active checks: the backend's books count only proxied connections.
            "pools": {
                "default": {
                    "servers": [{"address": f"127.0.0.1:{backend_port}"}],
                    "health": {"enabled": False},
                }
            },
            "upstream": upstream,
        }
    )
    balancer = Balancer(config, loop)
    await balancer.start()
    try:
        await scenario(Setup(balancer, books, int(balancer.listeners[0].bound.split(":")[1])))
    finally:
        await balancer.shutdown()
        backend.close()


def run(upstream: dict[str, object], scenario: Scenario, tmp_path: object) -> None:
    uvloop.run(_with_setup(upstream, scenario, str(tmp_path)))


@pytest.fixture
def tmp(tmp_path: object) -> str:
    return str(tmp_path)


def test_lifo_reuse_and_max_idle(tmp: str) -> None:
    async def scenario(setup: Setup) -> None:
        # Three at once: three connections, all kept (max_idle 3).
        await asyncio.gather(*(setup.get("/sleep/100") for _ in range(3)))
        await wait_until(lambda: len(setup.pool.idle) == 3)
        assert setup.books.opened == 3
        last_released = setup.pool.idle[-1]
        # The next request takes the most recently released connection.
        assert await setup.get() != b""
        assert setup.pool.idle[-1] is last_released
        assert setup.books.opened == 3
        # Five at once with max_idle 3: two are closed on release.
        await asyncio.gather(*(setup.get("/sleep/100") for _ in range(5)))
        await wait_until(lambda: setup.pool.total == 3 and len(setup.books.open_now) == 3)
        assert len(setup.pool.idle) == 3

    run({"max_idle": 3}, scenario, tmp)


def test_idle_timeout_closes(tmp: str) -> None:
    async def scenario(setup: Setup) -> None:
        await setup.get()
        assert setup.pool.total == 1
        await wait_until(lambda: setup.pool.total == 0 and not setup.books.open_now)

    run({"idle_timeout": 0.2}, scenario, tmp)


@pytest.mark.parametrize("path", ["/then-close", "/then-garbage"])
def test_idle_connection_that_closes_or_speaks_is_evicted(tmp: str, path: str) -> None:
    async def scenario(setup: Setup) -> None:
        first = await setup.get(path)
        await wait_until(lambda: setup.pool.total == 0)
        assert not setup.pool.idle
        second = await setup.get()
        assert second != first  # a fresh connection served it

    run({}, scenario, tmp)


def test_a_connection_released_while_paused_reads_again(tmp: str) -> None:
    """A response whose last write fills the client's buffer pauses its upstream reading
    as it ends; the pool must not keep (and hand out) a connection that does not read."""

    async def scenario(setup: Setup) -> None:
        await setup.get()
        conn = setup.pool.idle.pop()
        conn.pause_reading(True)  # as the client's backpressure leaves it
        setup.pool.release(conn, True)
        assert conn.transport is not None
        assert conn.transport.is_reading()  # type: ignore[attr-defined]
        async with asyncio.timeout(5):
            assert await setup.get() != b""
        assert setup.books.opened == 1  # the same connection answered

    run({}, scenario, tmp)


def test_max_connections_queues_requests(tmp: str) -> None:
    async def scenario(setup: Setup) -> None:
        bodies = await asyncio.gather(*(setup.get("/sleep/30") for _ in range(4)))
        assert set(bodies) == {b"1"}  # one connection served all four, in turn
        assert setup.books.opened == 1

    run({"max_connections": 1}, scenario, tmp)


def test_tcp_nodelay_both_sides(tmp: str) -> None:
    async def scenario(setup: Setup) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
        writer.write(b"GET /sleep/200 HTTP/1.1\r\nHost: t\r\n\r\n")
        ctx = setup.balancer.listeners[0].ctx
        await wait_until(lambda: bool(ctx.connections) and setup.pool.total == 1)
        await wait_until(lambda: setup.pool.opening == 0)
        down: DownstreamProtocol = next(iter(ctx.connections))
        assert down.active is not None
        up = down.active.up
        assert up is not None
        for transport in (down.transport, up.transport):
            assert transport is not None
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    run({}, scenario, tmp)


def test_closed_connections_are_freed_without_the_cyclic_gc(tmp: str) -> None:
    # A protocol object left in a reference cycle waits for a pass of the cyclic GC; at
    # thousands of connections a second those passes are a real share of the work.
    def alive(kind: type) -> int:
        return sum(isinstance(o, kind) for o in gc.get_objects())

    async def scenario(setup: Setup) -> None:
        ctx = setup.balancer.listeners[0].ctx
        gc.collect()
        gc.disable()
        try:
            clients, upstreams = alive(DownstreamProtocol), alive(UpstreamProtocol)
            for _ in range(10):
                await setup.get("/then-close")  # the backend closes its side 50 ms later
                await wait_until(lambda: setup.pool.total == 0)
            await wait_until(lambda: not ctx.connections)
            # connection_lost runs one loop turn after the close
            await wait_until(lambda: alive(DownstreamProtocol) <= clients)
            await wait_until(lambda: alive(UpstreamProtocol) <= upstreams)
        finally:
            gc.enable()

    run({}, scenario, tmp)
