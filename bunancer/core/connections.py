"""ConnectionPool: the keep-alive connections to one upstream server.

Idle connections are reused last-in first-out (the warmest first), capped in number and
closed after an idle timeout; an idle connection the backend closes, or that speaks out of
turn, is evicted. With a cap on all connections, requests wait in a FIFO (bounded by the
server pool's `max_pending`). Bookkeeping is plain synchronous code; only opening a
connection awaits (one task per new connection, none per request).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING, Protocol

from .errors import Overloaded
from .settings import UpstreamSettings
from .tls import client_context, tls_problem
from .upstream import UpstreamProtocol

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger("bunancer")


class PendingCounter(Protocol):
    """What a pool exposes to cap the requests waiting for a connection (ServerPool)."""

    pending: int
    max_pending: int


class ConnectionPool:
    """Keep-alive connections to one server."""

    __slots__ = (
        "address",
        "closing",
        "handshake_problem",
        "host",
        "idle",
        "loop",
        "opening",
        "owner",
        "port",
        "settings",
        "total",
        "waiters",
    )

    def __init__(
        self, host: str, port: int, settings: UpstreamSettings, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.settings = settings
        self.loop = loop
        self.idle: list[UpstreamProtocol] = []  # LIFO: append and pop at the end
        self.total = 0  # open or opening
        self.opening = 0
        self.waiters: deque[tuple[Exchange, asyncio.TimerHandle]] = deque()
        self.closing = False
        self.owner: PendingCounter | None = None  # the server's pool: caps waiting requests
        self.handshake_problem = ""  # why the last TLS handshake failed (logged on change)

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
                exchange.connect_failed(Overloaded())  # a fast 503, no queue
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
        settings = self.settings
        tls = client_context(settings.tls_verify, settings.tls_ca_file) if settings.tls else None
        name = (settings.tls_server_name or self.host) if tls is not None else None
        try:
            async with asyncio.timeout(settings.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamProtocol(self), self.host, self.port,
                    ssl=tls, server_hostname=name,
                )  # fmt: skip
        except (OSError, TimeoutError) as error:
            if isinstance(error, ssl.SSLError):
                self._tls_failed(tls_problem(error))
            self.total -= 1
            self.opening -= 1
            if exchange is not None:
                exchange.connect_failed(error)
            self._serve_waiter()
            return
        self.opening -= 1
        self.handshake_problem = ""
        if exchange is not None and exchange.wants_connection:
            exchange.attach(conn)
        else:
            self.release(conn, True)

    def _tls_failed(self, problem: str) -> None:
        """A handshake with the server failed: said once per new reason, not per request."""
        if problem != self.handshake_problem:
            self.handshake_problem = problem
            log.warning("upstream %s: %s", self.address, problem)

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
        exchange.connect_failed(TimeoutError("no free upstream connection"))

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
            exchange.connect_failed(ConnectionError("shutting down"))

    @property
    def active(self) -> int:
        return self.total - len(self.idle) - self.opening

    @property
    def idle_count(self) -> int:
        return len(self.idle)

    def close_idle(self) -> None:
        """Close the idle connections (their server went out of rotation)."""
        for conn in self.idle[:]:
            conn.close()

    def reconfigure(self, settings: UpstreamSettings) -> None:
        self.settings = settings  # the next connection and request use it

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.address} total={self.total} idle={len(self.idle)} "
            f"opening={self.opening} waiters={len(self.waiters)}>"
        )
