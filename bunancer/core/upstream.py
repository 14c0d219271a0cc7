"""Upstream side: one Protocol per backend connection, and a keep-alive pool per server.

`UpstreamProtocol` parses responses with httptools and hands each event to the exchange
it currently serves. `UpstreamPool` keeps idle connections per server: LIFO reuse (the
warmest connection first), a cap on idle connections, an idle timeout, an optional cap on
all connections with a FIFO of waiters, and eviction of an idle connection that becomes
readable or closes. Bookkeeping is plain synchronous code; only opening a connection
awaits (one task per new connection, none per request).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httptools

from .deadline import Deadline

if TYPE_CHECKING:
    # The one kind of exchange a connection serves. Named as the class, not as a Protocol,
    # so that compiled calls into it are direct (see bunancer.native).
    from .proxy import Exchange
    from .server import Server


class PendingCounter(Protocol):
    """What a pool exposes to cap the requests waiting for a connection (ServerPool)."""

    pending: int
    max_pending: int


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    connect_timeout: float = 3.0
    response_timeout: float = 60.0
    idle_timeout: float = 4.0
    max_idle: int = 1024
    max_connections: int = 0  # 0: no limit
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024


class Overloaded(Exception):
    """No connection free and the pool's queue of waiting requests is full."""


class UpstreamProtocol(asyncio.Protocol):
    """One connection to a backend; serves one exchange at a time."""

    __deletable__ = ("parser",)  # for mypyc: `_release` deletes it
    __slots__ = (
        "_discard",
        "_headers",
        "_interim",
        "_upgraded",
        "closed",
        "deadline",
        "exchange",
        "got_bytes",
        "parser",
        "pool",
        "reading_paused",
        "reused",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.deadline = Deadline(pool.loop, self._on_deadline)
        self.closed = False
        self.reused = False  # served an exchange before the current one
        self.got_bytes = False  # any byte of the current response arrived
        self.reading_paused = False  # by the client side's backpressure
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._discard = False
        self._upgraded = False  # a 101 answered: the connection becomes a tunnel

    # -- connection events -------------------------------------------------------------

    # A stream transport (uvloop's are not asyncio.Transport subclasses, hence the ignore).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        settings = self.pool.settings
        transport.set_write_buffer_limits(settings.write_buffer_high, settings.write_buffer_low)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # An idle connection must not speak: the backend is closing it or is broken.
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._upgraded:
                self._switch(exchange, data[upgrade.args[0] :])
                return
            self.close()
            exchange.upstream_failed(502, "unexpected upgrade from upstream")
            return
        except httptools.HttpParserError as error:
            if self._upgraded:
                # llhttp stops at a 101 without "Connection: upgrade" with an error.
                end = data.find(b"\r\n\r\n")
                self._switch(exchange, data[end + 4 :] if end >= 0 else b"")
                return
            self.close()
            exchange.upstream_failed(502, f"invalid response from upstream: {error}")
            return
        if self._upgraded:
            self._switch(exchange, b"")
            return
        if self._discard:
            # The response to a HEAD request ended at its head, but llhttp still expects
            # the body its Content-Length announced: start the next response afresh.
            self._discard = False
            self.parser = httptools.HttpResponseParser(self)
            self._headers = []  # whatever the old parser read after that head is dropped
        if self.exchange is not None:
            # More to come: the backend's clock restarts (not needed for a response that
            # ended in this read, the usual case for small ones, which its end flushed).
            self.deadline.set(self.pool.settings.response_timeout)
            exchange.flush()

    def _switch(self, exchange: Exchange, rest: bytes) -> None:
        """The backend switched protocols: this connection leaves the pool for a tunnel."""
        self.exchange = None
        self.deadline.cancel()
        self.pool.detach(self)
        exchange.upgraded(self, rest)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # Break the cycles through the parser and the deadline (see DownstreamProtocol).
        self.deadline.close()
        del self.parser
        self.pool.forget(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            # The backend is not reading what we send: that is its clock running.
            self.deadline.set(self.pool.settings.response_timeout)
            exchange.upstream_paused(True)

    def resume_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            if not exchange.req_complete:
                self.deadline.clear()  # back to waiting on the client's upload
            exchange.upstream_paused(False)

    # -- exchange lifecycle ---------------------------------------------------------------

    def begin(self, exchange: Exchange) -> None:
        """Start serving `exchange`: its request is about to be written."""
        self.exchange = exchange
        self.got_bytes = False
        # (`_headers` is empty: a connection is reused only after a whole response, and
        # after a HEAD response `data_received` starts afresh.)
        if exchange.req_complete:
            self.deadline.set(self.pool.settings.response_timeout)
        else:
            # The response clock starts when the request is sent (`request_sent`); while
            # the client uploads, its own body-idle clock governs. (`deadline.clear()`,
            # inlined: every exchange passes here.)
            self.deadline.at = 0.0

    def request_sent(self) -> None:
        if self.exchange is not None and not self.got_bytes:
            self.deadline.set(self.pool.settings.response_timeout)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def pause_reading(self, paused: bool) -> None:
        """Backpressure from the client side: stop reading while its buffer is full."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.reading_paused = paused
        if paused:
            transport.pause_reading()
            self.deadline.clear()  # waiting on the client is not the backend's fault
        else:
            transport.resume_reading()
            if self.exchange is not None:
                self.deadline.set(self.pool.settings.response_timeout)

    @property
    def idle(self) -> bool:
        return self.exchange is None and not self.closed

    def _on_deadline(self) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # idle timeout in the pool
        else:
            self.exchange = None
            self.abort()
            exchange.upstream_failed(504, "upstream response timeout")

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or self._discard:
            return
        status = self.parser.get_status_code()
        headers = self._headers
        self._headers = []
        if status == 101:
            self._upgraded = True
        elif status < 200:
            # Interim (100 Continue, 103 Early Hints): llhttp ends it as a message of its own.
            self._interim = True
            exchange.interim_response(status, headers)
            return
        exchange.response_head(status, headers)
        if exchange.head_request:
            self._discard = True
            self._finish(exchange, True)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None and not self._discard:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self._upgraded:
            return  # not a message end: the tunnel takes over (see data_received)
        if self._interim:
            self._interim = False
            return
        exchange = self.exchange
        if exchange is None or self._discard:
            return
        # `_finish`, inlined: every response ends here.
        self.exchange = None
        self.reused = True
        exchange.response_complete(self.parser.should_keep_alive() and not self.closed)

    def _finish(self, exchange: Exchange, keep_alive: bool) -> None:
        self.exchange = None
        self.reused = True
        exchange.response_complete(keep_alive and not self.closed)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("idle" if self.exchange is None else "active")
        return f"<UpstreamProtocol {self.pool.server.address} {state}>"


class UpstreamPool:
    """Keep-alive connections to one server."""

    __slots__ = (
        "closing",
        "idle",
        "loop",
        "opening",
        "owner",
        "server",
        "settings",
        "total",
        "waiters",
    )

    def __init__(
        self, server: Server, settings: UpstreamSettings, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.server = server
        self.settings = settings
        self.loop = loop
        self.idle: list[UpstreamProtocol] = []  # LIFO: append and pop at the end
        self.total = 0  # open or opening
        self.opening = 0
        self.waiters: deque[tuple[Exchange, asyncio.TimerHandle]] = deque()
        self.closing = False
        self.owner: PendingCounter | None = None  # the server's pool: caps waiting requests

    def acquire(self, exchange: Exchange) -> None:
        """Give `exchange` a connection now (idle one) or later (opened, or freed)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                exchange.attach(conn)  # its idle deadline gives way to the exchange's
                return
        limit = self.settings.max_connections
        if limit and self.total >= limit:
            owner = self.owner
            if owner is not None and owner.max_pending and owner.pending >= owner.max_pending:
                exchange.connect_failed(self.server, Overloaded())  # a fast 503, no queue
                return
            if owner is not None:
                owner.pending += 1
            handle = self.loop.call_later(
                self.settings.connect_timeout, self._waiter_timeout, exchange
            )
            self.waiters.append((exchange, handle))
            return
        self.total += 1
        self.opening += 1
        self.loop.create_task(self._open(exchange))

    def cancel(self, exchange: Exchange) -> None:
        """Forget a waiting exchange (its client went away)."""
        for index, (waiter, handle) in enumerate(self.waiters):
            if waiter is exchange:
                handle.cancel()
                del self.waiters[index]
                self._left_queue()
                return

    async def _open(self, exchange: Exchange | None) -> None:
        server = self.server
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamProtocol(self), server.host, server.port
                )
        except (OSError, TimeoutError) as error:
            self.total -= 1
            self.opening -= 1
            if exchange is not None:
                exchange.connect_failed(server, error)
            self._serve_waiter()
            return
        self.opening -= 1
        if exchange is not None and exchange.wants_connection:
            exchange.attach(conn)
        else:
            self.release(conn, True)

    def release(self, conn: UpstreamProtocol, reusable: bool) -> None:
        """Take back a connection; keep it for reuse only if both messages ended cleanly."""
        conn.exchange = None
        if not reusable or conn.closed or self.closing:
            conn.close()
            return
        # The exchange may end with reading paused (its last write filled the client's
        # buffer): a kept connection must read, to answer its next exchange and to notice a
        # backend that closes it or speaks out of turn while idle.
        if conn.reading_paused:
            conn.pause_reading(False)
        if self.waiters:
            exchange, handle = self.waiters.popleft()
            handle.cancel()
            self._left_queue()
            # Deferred: we may be inside the previous response's parser callback.
            self.loop.call_soon(self._hand_over, conn, exchange)
            return
        if len(self.idle) >= self.settings.max_idle:
            conn.close()
            return
        self.idle.append(conn)
        conn.deadline.set(self.settings.idle_timeout)

    def _hand_over(self, conn: UpstreamProtocol, exchange: Exchange) -> None:
        if conn.closed:
            self.acquire(exchange)
        elif not exchange.wants_connection:
            self.release(conn, True)
        else:
            exchange.attach(conn)

    def detach(self, conn: UpstreamProtocol) -> None:
        """A connection becomes a tunnel: it is no longer the pool's (never reused)."""
        self.total -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        self._serve_waiter()

    def forget(self, conn: UpstreamProtocol) -> None:
        """A connection closed: drop it from the books and let a waiter open one."""
        self.total -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        self._serve_waiter()

    def _serve_waiter(self) -> None:
        limit = self.settings.max_connections
        if self.waiters and not self.closing and (not limit or self.total < limit):
            exchange, handle = self.waiters.popleft()
            handle.cancel()
            self._left_queue()
            self.acquire(exchange)

    def _left_queue(self) -> None:
        if self.owner is not None:
            self.owner.pending -= 1

    def _waiter_timeout(self, exchange: Exchange) -> None:
        for index, (waiter, _) in enumerate(self.waiters):
            if waiter is exchange:
                del self.waiters[index]
                self._left_queue()
                break
        exchange.connect_failed(self.server, TimeoutError("no free upstream connection"))

    def close(self) -> None:
        """Close idle connections now and every other one when it is released."""
        self.closing = True
        for conn in self.idle[:]:
            conn.close()
        self.idle.clear()
        while self.waiters:
            exchange, handle = self.waiters.popleft()
            handle.cancel()
            self._left_queue()
            exchange.connect_failed(self.server, ConnectionError("shutting down"))

    @property
    def active(self) -> int:
        return self.total - len(self.idle) - self.opening

    def __repr__(self) -> str:
        return (
            f"<UpstreamPool {self.server.address} total={self.total} idle={len(self.idle)} "
            f"opening={self.opening} waiters={len(self.waiters)}>"
        )
