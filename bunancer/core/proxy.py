"""Downstream side: one Protocol per client connection, and the exchange of one request.

`DownstreamProtocol` parses requests with httptools callbacks (no task or coroutine per
request), routes each to a pool, and answers pipelined requests in order: the first is
active, the next ones wait in a queue with their bodies buffered up to a bound (reading
pauses beyond it). `Exchange` ties one request to one upstream connection: it writes the
request head and streams the body up, re-frames the response and streams it down, and
couples each side's write buffer to the other side's reading (backpressure both ways).

Outgoing response bytes produced while one upstream read is parsed are gathered and
written once, so a small response costs one send() on the client socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from time import perf_counter  # request timing: uvloop's loop.time() counts milliseconds
from typing import TYPE_CHECKING, Final

import httptools

from .accesslog import AccessLog
from .algorithms import sticky_token
from .deadline import Deadline
from .errors import STATUS_LINES, ProxyError, error_response
from .framing import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    IDEMPOTENT_METHODS,
    LAST_CHUNK,
    check_request_framing,
    check_target,
    check_version,
    downstream_body,
    encode_chunk,
    response_body,
    sniff_version,
)
from .headers import (
    ForwardingOptions,
    RequestHead,
    ResponseHead,
    build_request_head,
    forwarding_lines,
    scan_request_headers,
    scan_response_headers,
)
from .pool import RETRY_RESERVE
from .routing import RouteTable
from .stats import CLIENT_4XX, CLIENT_ABORT, CONNECT, REJECTED, TIMEOUT, UPSTREAM_5XX, ServerStats
from .tunnel import Tunnel
from .upstream import Overloaded

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .pool import ServerPool
    from .server import Server
    from .upstream import UpstreamProtocol

log = logging.getLogger("bunancer.proxy")

# Why the client side's reading is paused (several reasons can hold at once).
_PAUSE_UPSTREAM_FULL: Final = 1  # the upstream write buffer is over its high-water mark
_PAUSE_PENDING: Final = 2  # body bytes are buffered while no upstream connection is attached
_PAUSE_PIPELINE: Final = 4  # too many pipelined requests wait behind the active one
_PAUSE_DONE: Final = 8  # no more requests will be read on this connection
_PAUSE_UPGRADE: Final = 16  # an upgrade request waits for its answer

# What the single downstream deadline currently means.
_T_NONE: Final = 0
_T_HEADER: Final = 1
_T_BODY: Final = 2
_T_KEEPALIVE: Final = 3
_T_SEND: Final = 4
# The first head of a connection, due `header_timeout` after connecting. No timer of the
# connection's own: the listener's sweep watches every such connection (see ListenerContext).
_T_FIRST: Final = 5


def sweep_interval(header_timeout: float) -> float:
    """How often a listener looks for first heads that are late: a quarter of the timeout,
    at most a second. A late head is answered `header_timeout` after the first sweep that
    saw its connection, so never early and at most about two intervals late."""
    return min(1.0, max(header_timeout / 4, 0.001))


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int = 0  # 0: no limit
    max_pipelined: int = 32
    tunnel_idle_timeout: float = 3600.0
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    forwarding: ForwardingOptions = field(default_factory=ForwardingOptions)
    stats: bool = True


class ListenerContext:
    """What every connection of one listener shares."""

    __slots__ = (
        "access_log",
        "connections",
        "draining",
        "forwarding_cache",
        "loop",
        "rejected",
        "routes",
        "settings",
        "stats_enabled",
        "sweeping",
        "tunnels",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        routes: RouteTable[ServerPool],
        settings: ListenerSettings,
    ) -> None:
        self.loop = loop
        self.routes = routes
        self.settings = settings
        self.connections: set[DownstreamProtocol] = set()
        self.draining = False
        self.forwarding_cache: dict[tuple[str, bytes | None], bytes] = {}
        self.stats_enabled = settings.stats
        self.access_log: AccessLog | None = None
        self.tunnels: set[Tunnel] = set()  # upgraded connections (WebSocket)
        self.rejected = ServerStats()  # requests refused before any pool was chosen
        self.sweeping = False

    # A new connection's first head has a deadline, and arming a timer for it, then
    # cancelling it when the head arrives, costs more than all the rest of the connection's
    # own bookkeeping when each connection carries one request. So one timer per listener
    # sweeps the open connections instead, while there are any: one attribute check per
    # open connection and interval (a sweep over 10,000: 0.1 ms compiled, 1.8 as Python).

    def start_sweep(self) -> None:
        self.sweeping = True
        self.loop.call_later(sweep_interval(self.settings.header_timeout), self._sweep)

    def _sweep(self) -> None:
        if not self.connections:
            self.sweeping = False
            return
        # Re-armed first: a failure below must not end the sweeping for the listener.
        self.loop.call_later(sweep_interval(self.settings.header_timeout), self._sweep)
        now = self.loop.time()
        due = now - self.settings.header_timeout
        late: list[DownstreamProtocol] = []
        for conn in self.connections:
            if conn.timeout_kind == _T_FIRST:
                if conn.born < 0.0:
                    # Arrived since the last sweep: its clock starts now, never before
                    # it connected (however late this sweep runs), at most a sweep after.
                    conn.born = now
                elif conn.born <= due:
                    late.append(conn)
        for conn in late:
            conn.on_timeout()

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their reply."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    @property
    def busy(self) -> int:
        """Connections and tunnels still open (graceful shutdown waits for them)."""
        return len(self.connections) + len(self.tunnels)

    def abort_all(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for tunnel in list(self.tunnels):
            tunnel.close()


class Exchange:
    """One request and its response, from selection to the last byte."""

    __slots__ = (
        "body_size",
        "bytes_out",
        "chunked_request",
        "done",
        "down",
        "early_data",
        "head",
        "head_request",
        "http11",
        "keep_alive",
        "kept",
        "kept_lost",
        "key",
        "local_status",
        "method",
        "out",
        "out_body",
        "pending",
        "pending_size",
        "pool",
        "req_body_sent",
        "req_complete",
        "request_headers",
        "resp_started",
        "server",
        "set_sticky",
        "started",
        "status",
        "target",
        "tries",
        "up",
        "up_body",
        "up_started",
        "upgrade",
        "wants_connection",
    )

    def __init__(
        self,
        down: DownstreamProtocol,
        pool: ServerPool | None,
        method: bytes,
        head: bytes,
        http11: bool,
        keep_alive: bool,
        chunked_request: bool,
    ) -> None:
        self.down = down
        self.pool = pool
        self.method = method
        self.head = head
        self.http11 = http11
        self.keep_alive = keep_alive
        self.chunked_request = chunked_request
        self.head_request = method == b"HEAD"
        self.server: Server | None = None
        self.up: UpstreamProtocol | None = None
        self.pending: list[bytes] | None = None  # body read before a connection is attached
        self.pending_size = 0
        self.req_complete = False
        self.req_body_sent = False
        self.resp_started = False
        self.done = False
        self.wants_connection = True
        self.tries = 0  # servers tried
        self.key: bytes | None = None  # for hash and sticky selection
        self.set_sticky = False
        # The request body kept for a retry after it was sent: idempotent requests only, up
        # to the pool's retry_body_max. Made at the first body byte (most requests have
        # none); `kept_lost` once the body outgrew it.
        self.kept: list[bytes] | None = None
        self.kept_lost = method not in IDEMPOTENT_METHODS
        self.local_status = 0
        self.upgrade = False  # asked to switch protocols (WebSocket)
        self.early_data = b""  # client bytes after the upgrade request, held
        self.out: list[bytes] = []
        self.up_body = BODY_NONE
        self.out_body = BODY_NONE
        self.body_size = 0
        self.bytes_out = 0
        self.status = 0  # the status sent to the client
        self.started = 0.0
        self.target = b""  # these two are kept for the access log only
        self.request_headers: Sequence[tuple[bytes, bytes]] = ()
        self.up_started = 0.0

    # -- start and selection ---------------------------------------------------------------

    def start(self) -> None:
        if self.done:
            return
        self.started = perf_counter()
        if self.local_status:
            self.fail(self.local_status, REJECTED)
            return
        pool = self.pool
        if pool is None:
            self.fail(503, REJECTED)
            return
        tokens = pool.retry_tokens + pool.retry_ratio
        if tokens <= RETRY_RESERVE:
            pool.retry_tokens = tokens
        server = pool.selector.pick(pool.routable, self.key)  # `pool.pick` without `avoid`
        if server is None:
            self.fail(503, REJECTED)
            return
        if pool.sticky and not pool.selector.knows(self.key):
            self.set_sticky = True  # the client has no (valid) sticky cookie: give one
        self._use(server)

    def _use(self, server: Server) -> None:
        self.server = server
        self.tries += 1
        server.in_flight += 1
        if server.in_flight > server.max_in_flight:
            server.max_in_flight = server.in_flight
        if self.pool is not None and self.pool.selector.tracks_load:
            self.pool.selector.started(server)
        assert server.connections is not None
        server.connections.acquire(self)

    def _release_server(self) -> None:
        server = self.server
        if server is not None:
            server.in_flight -= 1
            self.server = None
            if self.pool is not None and self.pool.selector.tracks_load:
                self.pool.selector.finished(server)

    def _may_retry(self) -> bool:
        """Are tries and the pool's retry budget left?"""
        pool = self.pool
        return (
            pool is not None and self.tries <= pool.balancing.retries and pool.retry_tokens >= 1.0
        )

    def _retry(self, failed: Server, status: int, error: int) -> bool:
        """Send the request again, to another server when there is one; False when no try
        or budget is left. The failed attempt (`status` 0 when nothing was answered) counts
        against `failed`, unless `error` is -1 (it never reached the server)."""
        pool = self.pool
        if pool is None or not self._may_retry():
            return False
        pool.take_retry()
        self._release_server()
        other = pool.pick(self.key, avoid=failed)
        if error >= 0 and self.down.ctx.stats_enabled:
            failed.stats.record_retried(status, error, other is not None and other is not failed)
        self._use(other if other is not None else failed)
        return True

    def attach(self, conn: UpstreamProtocol) -> None:
        """The pool gives us a connection: send the head and what body we have."""
        if self.done:
            conn.pool.release(conn, True)
            return
        self.up = conn
        if self.down.ctx.access_log is not None:
            self.up_started = perf_counter()
        conn.begin(self)
        pending = self.pending
        if self.req_body_sent and not self.kept_lost:
            # A retry of a request whose body went to the failed server: replay it.
            conn.write(b"".join((self.head, *(self.kept or ()))))
        elif pending:
            conn.write(b"".join((self.head, *pending)))
            self.req_body_sent = True
            self.pending = None
            self.pending_size = 0
            self.down.set_paused(_PAUSE_PENDING, False)
        else:
            conn.transport.write(self.head)  # type: ignore[union-attr]  # connected
        if self.down.write_paused:
            conn.pause_reading(True)

    def connect_failed(self, server: Server, error: BaseException) -> None:
        if self.done:
            return
        log.debug("connect to %s failed: %r", server.address, error)
        if isinstance(error, Overloaded):
            # No free connection and the pool's queue is full: another server may have room.
            if not self._retry(server, 0, -1):  # it never reached the server
                self.fail(503, REJECTED)
            return
        timeout = isinstance(error, TimeoutError)
        server.passive_failure("connect timeouts" if timeout else "connect failures")
        # Nothing was sent: a retry on another server is always safe.
        if not self._retry(server, 0, TIMEOUT if timeout else CONNECT):
            self.fail(504 if timeout else 502, TIMEOUT if timeout else CONNECT)

    # -- request body, from the client parser ----------------------------------------------

    def request_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.chunked_request:
            data = encode_chunk(data)
        if not self.kept_lost:
            pool = self.pool
            if pool is not None and self.body_size <= pool.balancing.retry_body_max:
                if self.kept is None:
                    self.kept = [data]
                else:
                    self.kept.append(data)
            else:
                self.kept = None
                self.kept_lost = True
        up = self.up
        if up is not None:
            up.write(data)
            self.req_body_sent = True
        elif not self.done:
            self._hold(data)
            self.pending_size += len(data)
            if self.pending_size > self.down.ctx.settings.write_buffer_high:
                self.down.set_paused(_PAUSE_PENDING, True)

    def _hold(self, data: bytes) -> None:
        """Keep request bytes until a connection is attached (the list is made on demand)."""
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)

    def request_complete(self) -> None:
        self.req_complete = True
        up = self.up
        if self.chunked_request:
            if self.kept is not None and not self.kept_lost:
                self.kept.append(LAST_CHUNK)
            if up is not None:
                up.write(LAST_CHUNK)
            elif not self.done:
                self._hold(LAST_CHUNK)
        if up is not None:
            up.request_sent()

    def upstream_paused(self, paused: bool) -> None:
        self.down.set_paused(_PAUSE_UPSTREAM_FULL, paused)

    # -- response, from the upstream parser ------------------------------------------------

    def interim_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.http11 or self.resp_started:
            return  # HTTP/1.0 clients do not take 1xx responses
        lines = scan_response_headers(headers).lines
        lines[0] = STATUS_LINES[status]
        lines.append(b"\r\n")
        self.out.append(b"".join(lines))

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        server = self.server
        if server is not None:
            # Passive health: configured statuses count as failures, anything else resets.
            if status in server.eject_statuses:
                server.passive_failure(str(status))
            elif server.passive_failures:
                server.passive_failures = 0
            pool = self.pool
            if (
                pool is not None
                and status in pool.retry_on
                and self.replayable()
                and self._retry_after_answer(
                    server, status, UPSTREAM_5XX if status >= 500 else CLIENT_4XX
                )
            ):
                return  # this answer is dropped; another server was asked
        head = scan_response_headers(headers)
        if status == 101:
            self._switching_head(head)
            return
        up_body = response_body(
            status, self.head_request, head.content_length is not None, head.chunked
        )
        # (Length-delimited or no body, the usual case, passes as it is: no call.)
        out_body = (
            up_body
            if up_body is BODY_LENGTH or up_body is BODY_NONE
            else downstream_body(up_body, self.http11)
        )
        self.up_body = up_body
        self.out_body = out_body
        down = self.down
        keep = (
            self.keep_alive
            and self.req_complete
            and out_body is not BODY_UNTIL_CLOSE
            and not down.ctx.draining
            and not down.client_eof
        )
        self.keep_alive = keep
        parts = head.lines
        parts[0] = STATUS_LINES[status]
        if out_body is BODY_CHUNKED:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif head.content_length is not None and (
            out_body is BODY_LENGTH or self.head_request or status == 304
        ):
            # HEAD and 304 keep the length of the representation they describe.
            parts.append(b"Content-Length: ")
            parts.append(head.content_length)
            parts.append(b"\r\n")
        if not keep:
            parts.append(b"Connection: close\r\n")
        elif not self.http11:
            parts.append(b"Connection: keep-alive\r\n")
        if self.set_sticky and server is not None and self.pool is not None:
            parts.append(sticky_cookie(self.pool.balancing.sticky_cookie, server))
        parts.append(b"\r\n")
        out = self.out
        if out:  # a 1xx head still unsent
            out.extend(parts)
        else:
            self.out = parts  # `flush` joins the head with what body follows, once
        self.resp_started = True
        self.status = status

    def _switching_head(self, head: ResponseHead) -> None:
        """The 101 head: Connection and Upgrade go back in (they are what it is about)."""
        if not self.upgrade or head.upgrade_value is None:
            # A 101 nobody asked for cannot be relayed as HTTP: treat it as broken.
            self.upstream_failed(502, "101 Switching Protocols without an upgrade request")
            return
        lines = head.lines
        lines[0] = STATUS_LINES[101]
        lines.append(b"Connection: Upgrade\r\nUpgrade: ")
        lines.append(head.upgrade_value)
        lines.append(b"\r\n\r\n")
        self.out.append(b"".join(lines))
        self.resp_started = True
        self.status = 101

    def upgraded(self, conn: UpstreamProtocol, rest: bytes) -> None:
        """The backend switched protocols: both connections become one byte tunnel."""
        if self.done or not self.resp_started:
            conn.close()
            return
        down = self.down
        ctx = down.ctx
        self.flush()
        self.up = None
        self.done = True
        self.keep_alive = False
        tunnel = Tunnel(ctx.loop, ctx.settings.tunnel_idle_timeout)

        def closed(tunnel: Tunnel) -> None:
            ctx.tunnels.discard(tunnel)
            self.bytes_out += tunnel.bytes_out
            self.body_size += tunnel.bytes_in
            self._record(-1)
            self._release_server()

        tunnel.on_close = closed
        ctx.tunnels.add(tunnel)
        ctx.connections.discard(down)
        down.detach()
        assert down.transport is not None
        assert conn.transport is not None
        tunnel.client.adopt(down.transport)
        tunnel.server.adopt(conn.transport)
        tunnel.link(to_client=rest, to_server=self.early_data)

    def replayable(self) -> bool:
        """Can the request go to another server after this one saw it? Idempotent, fully
        received, and its body (if any was sent) kept."""
        return (
            self.method in IDEMPOTENT_METHODS
            and self.req_complete
            and (not self.req_body_sent or not self.kept_lost)
        )

    def _retry_after_answer(self, server: Server, status: int, error: int) -> bool:
        """Drop the current upstream (its answer is not wanted) and retry elsewhere."""
        if not self._may_retry():
            return False
        up = self.up
        self.up = None
        if up is not None:
            up.exchange = None
            up.abort()  # its answer is still arriving: the connection cannot be reused
        self.out.clear()
        return self._retry(server, status, error)

    def response_body(self, data: bytes) -> None:
        if self.out_body is BODY_CHUNKED:
            self.out.extend((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.out.append(data)

    def response_complete(self, reusable: bool) -> None:
        if self.out_body is BODY_CHUNKED:
            self.out.append(LAST_CHUNK)
        self.flush()
        up = self.up
        self.up = None
        if up is not None:
            up.pool.release(
                up, reusable and self.req_complete and self.up_body is not BODY_UNTIL_CLOSE
            )
        self._finish()

    def flush(self) -> None:
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.bytes_out += len(data)
            down = self.down
            if not down.closed:
                down.transport.write(data)  # type: ignore[union-attr]  # set while open
            out.clear()

    def upstream_lost(self, conn: UpstreamProtocol) -> None:
        """The upstream connection closed while serving us."""
        if self.done:
            return
        self.up = None
        if self.resp_started:
            if self.up_body is BODY_UNTIL_CLOSE:
                self.response_complete(False)  # the close is the end of this body
            else:
                self.flush()
                self.abort_client()  # never present a truncated body as complete
            return
        server = self.server
        if (
            server is not None
            and not conn.got_bytes
            and (
                self.replayable()
                or (conn.reused and not self.req_body_sent and self.method in IDEMPOTENT_METHODS)
            )
            and self._retry(server, 0, UPSTREAM_5XX)
        ):
            # The connection closed before any answer (a kept-alive connection the backend
            # closed as we reused it, or a backend that just died): the request goes again,
            # to another server when there is one (its other pooled connections are likely
            # dead too).
            return
        if self.server is not None:
            self.server.passive_failure("closed connections")
        self.fail(502, UPSTREAM_5XX)

    def upstream_failed(self, status: int, detail: str) -> None:
        if self.done:
            return
        log.debug("upstream failure (%d): %s", status, detail)
        server = self.server
        if server is not None:
            server.passive_failure("timeouts" if status == 504 else "invalid responses")
            pool = self.pool
            if (
                status == 504
                and not self.resp_started
                and pool is not None
                and pool.balancing.retry_timeouts
                and self.replayable()
                and self._retry_after_answer(server, 0, TIMEOUT)
            ):
                return
        if self.resp_started:
            self.flush()
            self.abort_client()
        else:
            self.fail(status, TIMEOUT if status == 504 else UPSTREAM_5XX)

    # -- endings ------------------------------------------------------------------------------

    def fail(self, status: int, error: int = REJECTED) -> None:
        """Answer `status` ourselves (if no response byte went out yet) and end; `error` is
        the stats error class."""
        if self.done:
            return
        self._drop_upstream()
        down = self.down
        if self.resp_started:
            self.flush()
            self.abort_client()
            return
        keep = (
            status in (502, 503, 504)
            and self.req_complete
            and self.keep_alive
            and not down.ctx.draining
            and not down.client_eof
        )
        self.keep_alive = keep
        self.resp_started = True
        self.status = status
        response = error_response(status, keep)
        self.bytes_out += len(response)
        down.write(response)
        self._finish(error)

    def abort_client(self) -> None:
        """The response cannot be completed: close the client connection (the upstream
        died or broke framing mid-response)."""
        self._drop_upstream()
        self.done = True
        self._record(UPSTREAM_5XX)
        self._release_server()
        self.down.close()

    def _drop_upstream(self) -> None:
        up = self.up
        self.up = None
        self.wants_connection = False
        if up is not None:
            up.exchange = None
            up.abort()
        elif self.server is not None and self.server.connections is not None:
            self.server.connections.cancel(self)

    def _finish(self, error: int = -1) -> None:
        self.done = True
        self.wants_connection = False
        if error < 0:
            status = self.status
            if status >= 500:
                error = UPSTREAM_5XX
            elif status >= 400:
                error = CLIENT_4XX
        self._record(error)
        server = self.server
        if server is not None:
            # `_release_server`, inlined: every request passes here.
            server.in_flight -= 1
            self.server = None
            pool = self.pool
            if pool is not None:
                selector = pool.selector
                if selector.tracks_latency:
                    selector.observe(server, int((perf_counter() - self.started) * 1_000_000))
                if selector.tracks_load:
                    selector.finished(server)
        self.down.exchange_done(self)

    def _record(self, error: int) -> None:
        """Count the request where it belongs: its server, else its pool, else the listener."""
        ctx = self.down.ctx
        if not self.started:
            return
        if ctx.stats_enabled:
            server = self.server
            if server is not None:
                stats = server.stats
            else:
                stats = self.pool.rejected if self.pool is not None else ctx.rejected
            stats.record(
                self.status,
                int((perf_counter() - self.started) * 1_000_000),
                len(self.head) + self.body_size,
                self.bytes_out,
                error,
            )
        if ctx.access_log is not None:
            self._log_access(ctx.access_log)

    def _log_access(self, access_log: AccessLog) -> None:
        now = perf_counter()
        referer = user_agent = None
        for name, value in self.request_headers:
            if len(name) == 10 and name.lower() == b"user-agent":
                user_agent = value
            elif len(name) == 7 and name.lower() == b"referer":
                referer = value
        server = self.server
        access_log.add(
            self.down.client_ip.encode(),
            self.method,
            self.target,
            self.http11,
            self.status,
            self.bytes_out,
            referer,
            user_agent,
            server.label if server is not None else b"",
            now - self.up_started if self.up_started else -1.0,
            now - self.started,
        )

    def client_lost(self) -> None:
        if not self.done:
            self._drop_upstream()
            self.done = True
            self._record(CLIENT_ABORT)
            self._release_server()


class DownstreamProtocol(asyncio.Protocol):
    """One client connection."""

    __deletable__ = ("parser",)  # for mypyc: `_release` deletes it
    __slots__ = (
        # per connection
        "_forwarding",
        "_forwarding_host",
        "_pause",
        "active",
        "born",
        "client_eof",
        "client_ip",
        "closed",
        "ctx",
        "deadline",
        "head_raw",
        "head_size",
        "headers",
        "in_head",
        "line_read",
        "parser",
        "parsing",
        "queue",
        "timeout_kind",
        "transport",
        "upgrading",
        "url",
        "write_paused",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # Made on first use: a connection that carries a single request never needs one.
        self.deadline: Deadline | None = None
        self.timeout_kind = _T_NONE
        self.born = -1.0  # when the listener's sweep first saw it waiting for a first head
        self.client_ip = ""
        self.closed = False
        self.client_eof = False
        self.write_paused = False
        self._pause = 0
        self._forwarding = b""
        self._forwarding_host: bytes | None = None
        self.active: Exchange | None = None  # the exchange whose response is being sent
        self.queue: deque[Exchange] = deque()  # pipelined exchanges waiting their turn
        self.parsing: Exchange | None = None  # the exchange whose request body is being read
        self.upgrading: Exchange | None = None  # an Upgrade request waiting for its answer
        # the request head being read
        self.in_head = False
        self.line_read: bytes | None = None  # a read that starts with the request line
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.head_raw = 0

    # -- connection events ------------------------------------------------------------------

    # A stream transport (uvloop's are not asyncio.Transport subclasses, hence the ignore).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        ctx = self.ctx
        settings = ctx.settings
        transport.set_write_buffer_limits(settings.write_buffer_high, settings.write_buffer_low)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unknown"
        ctx.connections.add(self)
        # The first head is due `header_timeout` from the listener's next sweep, which
        # watches for it (no timer of our own); a later head, from its first byte.
        if not ctx.sweeping:
            ctx.start_sweep()
        self.timeout_kind = _T_FIRST

    def data_received(self, data: bytes) -> None:
        if self._pause & _PAUSE_DONE:
            return  # an error ended reading; what follows is not parsed
        if self.upgrading is not None and self._pause & _PAUSE_UPGRADE:
            self.upgrading.early_data += data  # arrived before reading paused
            return
        was_in_head = self.in_head
        # Between messages, the next one's request line starts this read (on_headers_complete
        # reads the version from it; on_message_complete forgets it for a pipelined next).
        self.line_read = None if was_in_head or self.parsing is not None else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, ProxyError):
                self._reject(cause.status)
            else:
                log.exception("internal error while handling a request", exc_info=cause)
                self._reject(500)
            return
        except httptools.HttpParserError:
            self._reject(400)
            return
        if self.in_head:
            # A head still incomplete after this read. Its clock starts now: a head that
            # arrives whole in one read (the usual case) never arms a timer at all. (The
            # first head's clock is the listener's sweep.)
            kind = self.timeout_kind
            if kind != _T_HEADER and kind != _T_FIRST:
                self._set_deadline(_T_HEADER, self.ctx.settings.header_timeout)
            if self.head_raw < 0:
                # It began in this read, after the requests this read completed (pipelined):
                # its bytes are counted from the next read on, not this whole read's.
                self.head_raw = 0
            else:
                # Bound what the parser buffers for a head that keeps coming.
                self.head_raw += len(data)
                if self.head_raw > self.ctx.settings.max_header_bytes:
                    self._reject(431)

    def eof_received(self) -> bool:
        # A client that closes while its request is in flight has given up on it (nginx's
        # 499): the upstream request is dropped and counted as a client abort. Clients
        # that half-close and still wait for an answer are too rare to keep a backend
        # busy for every client that left.
        self.client_eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        for exchange in (self.active, self.parsing, *self.queue):
            if exchange is not None:
                exchange.client_lost()
        self.active = self.parsing = None
        self.queue.clear()
        self._release()

    def _release(self) -> None:
        """Break this object's reference cycles once its connection is over.

        The parser and the deadline call back into this object, and so refer to it: left
        in place, every closed connection would wait for a pass of the cyclic GC, which
        walks every object still waiting. Nothing parses after this.
        """
        if self.deadline is not None:
            self.deadline.close()
        del self.parser

    def pause_writing(self) -> None:
        self.write_paused = True
        active = self.active
        if active is not None and active.up is not None:
            active.up.pause_reading(True)
            self._set_deadline(_T_SEND, self.ctx.settings.body_idle_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        active = self.active
        if self.timeout_kind == _T_SEND:
            self._set_deadline(_T_NONE, 0)
        if active is not None and active.up is not None:
            active.up.pause_reading(False)

    # -- writing and closing ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(data)

    def close(self) -> None:
        """Flush what is buffered, then close."""
        if not self.closed:
            self.closed = True
            self.timeout_kind = _T_NONE  # (and no sweep takes it for a late first head)
            if self.deadline is not None:
                self.deadline.cancel()
            assert self.transport is not None
            self.transport.close()

    def set_paused(self, reason: int, paused: bool) -> None:
        before = self._pause
        after = before | reason if paused else before & ~reason
        self._pause = after
        transport = self.transport
        if transport is None or self.closed:
            return
        if after and not before:
            transport.pause_reading()
            if self.timeout_kind == _T_BODY:
                self._timer().clear()  # we stopped reading: the client is not idle
        elif before and not after:
            transport.resume_reading()
            if self.timeout_kind == _T_BODY:
                self._timer().set(self.ctx.settings.body_idle_timeout)

    def detach(self) -> None:
        """The transport went to a tunnel: this protocol is done with it."""
        self.closed = True
        self.active = self.parsing = self.upgrading = None
        self.queue.clear()
        self._release()

    def _feed_held(self, data: bytes) -> None:
        """Parse bytes held back while an upgrade was pending (unless the client left)."""
        if not self.closed:
            self.data_received(data)

    def drain(self) -> None:
        """Graceful shutdown: close when idle, else after the reply in progress."""
        if self.active is None and self.parsing is None and not self.queue:
            self.close()

    def exchange_done(self, exchange: Exchange) -> None:
        """The active exchange sent its last byte: next pipelined request, or keep-alive."""
        if exchange is not self.active:
            return
        self.active = None
        if not exchange.keep_alive or self.closed:
            self.close()
            return
        if exchange is self.upgrading:
            # The backend did not switch protocols: back to HTTP with what was held.
            self.upgrading = None
            self.set_paused(_PAUSE_UPGRADE, False)
            if exchange.early_data:
                self.ctx.loop.call_soon(self._feed_held, exchange.early_data)
        if self.queue:
            following = self.queue.popleft()
            self.active = following
            if len(self.queue) < self.ctx.settings.max_pipelined:
                self.set_paused(_PAUSE_PIPELINE, False)
            # Deferred: we may still be inside the upstream parser's callback.
            self.ctx.loop.call_soon(following.start)
            return
        if self.ctx.draining or self.client_eof:
            if self.parsing is None and not self.in_head:
                self.close()
            return
        if not self.in_head and self.parsing is None:
            self.timeout_kind = _T_KEEPALIVE
            # (`_timer()` without the call once the deadline exists: as Python, the call
            # cost 1.6% of a keep-alive request.)
            (self.deadline or self._timer()).set(self.ctx.settings.keepalive_timeout)

    # -- timeouts ---------------------------------------------------------------------------------

    def _timer(self) -> Deadline:
        deadline = self.deadline
        if deadline is None:
            deadline = self.deadline = Deadline(self.ctx.loop, self.on_timeout)
        return deadline

    def _set_deadline(self, kind: int, seconds: float) -> None:
        self.timeout_kind = kind
        if kind != _T_NONE:
            self._timer().set(seconds)
        elif self.deadline is not None:
            self.deadline.clear()

    def on_timeout(self) -> None:
        kind = self.timeout_kind
        self.timeout_kind = _T_NONE
        if kind in (_T_HEADER, _T_FIRST):
            if self.in_head:
                self._reject(408)
            else:
                self.close()  # connected and said nothing
        elif kind == _T_BODY:
            exchange = self.parsing
            if exchange is not None and not exchange.done:
                self.set_paused(_PAUSE_DONE, True)
                exchange.fail(408)
            else:
                self.close()
        elif kind in (_T_KEEPALIVE, _T_SEND):
            self.close()

    # -- httptools callbacks (the request side) ----------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.head_raw = -1  # begun in the current read (see data_received)

    def on_url(self, url: bytes) -> None:
        url = self.url + url if self.url else url
        self.url = url
        if len(url) > self.ctx.settings.max_request_line:
            raise ProxyError(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Limits are checked once the head is complete; until then the raw byte count in
        # data_received bounds what can pile up here.
        self.headers.append((name, value))
        self.head_size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        settings = self.ctx.settings
        count = len(self.headers)
        if count > settings.max_headers or self.head_size + 4 * count > settings.max_header_bytes:
            raise ProxyError(431)
        method = parser.get_method()
        target = self.url
        if target[:1] != b"/" or 35 in target or method == b"CONNECT":  # "#" is 35
            check_target(method, target)  # the usual origin-form passes without a call
        head = scan_request_headers(self.headers)
        keep_alive = parser.should_keep_alive()
        if keep_alive and not head.connection_header:
            # llhttp accepts HTTP/0.9, 1.0, 1.1 and 2.0 only, and without a Connection or
            # Proxy-Connection header keeps only 1.1 alive (tests/core/test_llhttp.py pins
            # both): this is 1.1, known without get_http_version(), which formats a str
            # (~3% of a request).
            http11 = True
        else:
            line_read = self.line_read
            sniffed = (
                None
                if line_read is None
                else sniff_version(line_read, len(method) + 1 + len(self.url))
            )
            if sniffed is not None:
                http11 = sniffed
            else:
                version = parser.get_http_version()
                http11 = version == "1.1" or check_version(version)
        if target[:1] != b"/" and target != b"*":
            target, head = self._absolute_form(target)
        if head.host is None and http11:
            raise ProxyError(400, "HTTP/1.1 request without Host")
        content_length = head.content_length
        chunked = head.transfer_encoding is not None
        upgrade = False
        if chunked or head.upgrade:
            upgrade = parser.should_upgrade() and head.upgrade_value is not None
            check_request_framing(http11, content_length, head.transfer_encoding, upgrade)
        if content_length is not None:
            if settings.max_body_bytes and int(content_length) > settings.max_body_bytes:
                raise ProxyError(413)
            framing = b"Content-Length: " + content_length + b"\r\n"
        elif head.transfer_encoding is not None:  # chunked
            # Codings before the final chunked (rare) stay; chunked is re-applied by us.
            framing = b"Transfer-Encoding: " + head.transfer_encoding + b"\r\n"
        elif upgrade:
            # A protocol switch (WebSocket): the backend must see it asked for.
            assert head.upgrade_value is not None
            framing = b"Connection: Upgrade\r\nUpgrade: " + head.upgrade_value + b"\r\n"
        else:
            framing = b""
        routes = self.ctx.routes
        # (No rules, the usual case: the default pool, without the call to `match`.)
        pool = routes.match(head.host, target) if routes.routes else routes.default
        if head.x_forwarded_for is None and head.forwarded is None:
            # The client address is fixed per connection and Host rarely changes: keep the
            # lines per connection, and per listener for the next connection of a client.
            if head.host == self._forwarding_host and self._forwarding:
                forwarding = self._forwarding
            else:
                key = (self.client_ip, head.host)
                cache = self.ctx.forwarding_cache
                cached = cache.get(key)
                if cached is None:
                    if len(cache) >= 4096:
                        cache.clear()
                    forwarding = forwarding_lines(head, self.client_ip, settings.forwarding)
                    cache[key] = forwarding
                else:
                    forwarding = cached
                self._forwarding_host = head.host
                self._forwarding = forwarding
        else:
            forwarding = forwarding_lines(head, self.client_ip, settings.forwarding)
        request_head = build_request_head(method, target, head, forwarding, framing)
        exchange = Exchange(self, pool, method, request_head, http11, keep_alive, chunked)
        if pool is not None and pool.key_kind:
            exchange.key = pool.request_key(self.client_ip, target, self.headers)
        if upgrade:
            exchange.upgrade = True
            self.upgrading = exchange
        if self.ctx.access_log is not None:
            exchange.target = target
            exchange.request_headers = self.headers
        self.parsing = exchange
        if chunked or (content_length is not None and content_length != b"0"):
            self._set_deadline(_T_BODY, settings.body_idle_timeout)
        else:
            # `_set_deadline(_T_NONE, 0)`, inlined down to `Deadline.clear`'s one store.
            self.timeout_kind = _T_NONE
            deadline = self.deadline
            if deadline is not None:
                deadline.at = 0.0
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.queue.append(exchange)
            if len(self.queue) >= settings.max_pipelined:
                self.set_paused(_PAUSE_PIPELINE, True)

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None:
            return
        settings = self.ctx.settings
        if settings.max_body_bytes and exchange.body_size + len(body) > settings.max_body_bytes:
            raise ProxyError(413)  # (request_body counts body_size)
        exchange.request_body(body)
        if self.timeout_kind == _T_BODY:
            (self.deadline or self._timer()).set(settings.body_idle_timeout)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        self.parsing = None
        self.line_read = None
        if self.timeout_kind == _T_BODY:
            self._set_deadline(_T_NONE, 0)
        if exchange is not None:
            exchange.request_complete()

    # -- rarer paths ------------------------------------------------------------------------------

    def _absolute_form(self, target: bytes) -> tuple[bytes, RequestHead]:
        """``GET http://host/path``: the target's authority replaces Host (RFC 9112 3.2.2)."""
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise ProxyError(400, "malformed absolute request target") from None
        if not url.host:
            raise ProxyError(400, "absolute request target without host")
        authority = url.host if url.port is None else b"%s:%d" % (url.host, url.port)
        path = url.path or b"/"
        if url.query:
            path += b"?" + url.query
        headers = [(n, v) for n, v in self.headers if n.lower() != b"host"]
        headers.append((b"Host", authority))
        self.headers = headers
        return path, scan_request_headers(headers)

    def _after_upgrade(self, rest: bytes) -> None:
        """llhttp stopped after an Upgrade request. Until the backend answers, what follows
        is held: after a 101 it is the new protocol's first bytes, after any other answer
        it is parsed as the next request."""
        exchange = self.upgrading
        if exchange is None:
            if rest and not self.closed:
                self.data_received(rest)
            return
        exchange.early_data += rest
        self.set_paused(_PAUSE_UPGRADE, True)

    def _reject(self, status: int) -> None:
        """A request we cannot parse or accept: answer `status` in turn, then close."""
        self.set_paused(_PAUSE_DONE, True)
        self.in_head = False
        exchange = self.parsing
        if exchange is not None:
            # The error is in the body of a request already under way.
            self.parsing = None
            if exchange is self.active:
                exchange.fail(status)
            else:
                exchange.local_status = status
                exchange.keep_alive = False
            return
        failed = Exchange(self, None, b"", b"", True, False, False)
        failed.local_status = status
        failed.req_complete = True
        if self.active is None:
            self.active = failed
            failed.start()
        else:
            self.queue.append(failed)


def sticky_cookie(name: str, server: Server) -> bytes:
    return b"Set-Cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n" % (
        name.encode(),
        sticky_token(server).encode(),
    )
