"""Exchange: one request and its response, from selection to the last byte.

It writes the request head and streams the body up, re-frames the response and streams
it down, and couples each side's write buffer to the other side's reading (backpressure
both ways). Retries go to another server; every use of a server begins and ends through
its pool (`ServerPool.begin`/`end`), which keeps the selection accounting.
"""

from __future__ import annotations

import logging
from time import perf_counter  # request timing: uvloop's loop.time() counts milliseconds
from typing import TYPE_CHECKING

from .algorithms import sticky_cookie
from .body import RequestBody, replayable
from .connections import ConnectionPool
from .decisions import Decision
from .errors import STATUS_LINES, Overloaded, error_response, redirect_response
from .faults import FaultRule, act
from .framing import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    IDEMPOTENT_METHODS,
    LAST_CHUNK,
    downstream_body,
    encode_chunk,
    response_body,
)
from .headers import (
    ResponseHead,
    client_response_head,
    interim_head,
    scan_response_headers,
    switching_head,
)
from .listener import PAUSE_PENDING, PAUSE_UPSTREAM_FULL
from .stats import CLIENT_4XX, CLIENT_ABORT, CONNECT, REJECTED, TIMEOUT, UPSTREAM_5XX, error_class

if TYPE_CHECKING:
    from collections.abc import Sequence

    # The client connection and the upstream one each call into their exchange per
    # request, and it into them: typed as their classes, so compiled calls are direct.
    from .downstream import DownstreamProtocol
    from .pool import ServerPool
    from .server import Server
    from .tunnel import Tunnel
    from .upstream import UpstreamProtocol

log = logging.getLogger("bunancer.proxy")


class Exchange:
    """One request and its response, from selection to the last byte."""

    __slots__ = (
        "acquiring",
        "body",
        "bytes_out",
        "chunked_request",
        "decision",
        "done",
        "down",
        "early_data",
        "end_sent",
        "fault",
        "head",
        "head_request",
        "http11",
        "keep_alive",
        "key",
        "local_status",
        "location",
        "method",
        "out",
        "out_body",
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
        "trace",
        "tries",
        "tunnelled_in",
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
        self.req_complete = False
        self.req_body_sent = False
        self.end_sent = False  # the upstream knows the whole request is out
        self.resp_started = False
        self.done = False
        self.wants_connection = True
        self.acquiring = False  # inside the pool's `acquire`
        self.tries = 0  # servers tried
        self.key: bytes | None = None  # for hash and sticky selection
        self.set_sticky = False
        self.body: RequestBody | None = None  # made at the first body byte, if any
        self.local_status = 0
        self.fault: FaultRule | None = None  # a lab rule hit it: delayed, aborted or reset
        self.trace = b""  # asked why (X-Bunancer-Debug): the X-Bunancer-Decision lines
        self.decision: Decision | None = None  # its selection, when recorded
        self.location: bytes | None = None  # set: answered with a 308 to it (redirect_https)
        self.upgrade = False  # asked to switch protocols (WebSocket)
        self.early_data = b""  # client bytes after the upgrade request, held
        self.out: list[bytes] = []
        self.up_body = BODY_NONE
        self.out_body = BODY_NONE
        self.bytes_out = 0
        self.tunnelled_in = 0  # client bytes through a tunnel (upgrade)
        self.status = 0  # the status sent to the client
        self.started = 0.0
        self.target = b""  # these two are kept for the access log only
        self.request_headers: Sequence[tuple[bytes, bytes]] = ()
        self.up_started = 0.0

    # -- start and selection ---------------------------------------------------------------

    def start(self) -> None:
        if self.done:
            return
        if not self.started:  # (a delayed start keeps it: the delay is the client's wait)
            self.started = perf_counter()
        if self.local_status:
            self.fail(self.local_status, REJECTED)
            return
        if self.location is not None:
            self._answer(308, -1, True, self.location)
            return
        pool = self.pool
        if pool is None:
            self.fail(503, REJECTED)
            return
        fault = self.fault
        if fault is not None:
            self.fault = None
            if act(fault, self, self.down.ctx.loop, self.down.transport):
                return
        pool.admit(self)
        server = pool.begin(self.key)
        if server is None:
            self.fail(503, REJECTED)
            return
        if pool.sticky and not pool.selector.knows(self.key):
            self.set_sticky = True  # the client has no (valid) sticky cookie: give one
        self._use(server)

    def _use(self, server: Server) -> None:
        """Send the request to `server` (its pool's `begin` counted it in flight)."""
        self.server = server
        self.tries += 1
        connections = server.connections
        assert isinstance(connections, ConnectionPool)  # (compiled: then a direct call)
        self.acquiring = True
        connections.acquire(self)
        self.acquiring = False

    def _release_server(self, us: int = -1) -> None:
        """This use of the server is over; `us`: how long its answer took, if it gave one."""
        server = self.server
        if server is not None:
            self.server = None
            assert self.pool is not None  # a server only ever comes from its pool's begin
            self.pool.end(server, us, self.status)

    def _retry(self, failed: Server, status: int, error: int) -> bool:
        """Send the request again, to another server when there is one (ServerPool.retry);
        False when no try or budget is left."""
        pool = self.pool
        if pool is None:
            return False
        count = self.down.ctx.stats_enabled
        other = pool.retry(failed, self.tries, self.key, status, error, count)
        if other is None:
            return False
        decision = self.decision
        if decision is not None:  # its selection was recorded: its retries are too
            self.trace += decision.retried(failed.id, status, other.id, self.trace != b"")
        self.server = None  # (its use ended in `retry`)
        self._use(other)
        return True

    def attach(self, conn: UpstreamProtocol) -> None:
        """The pool gives us a connection: send the head and what body we have."""
        if self.done:
            conn.connections.release(conn, True)
            return
        self.up = conn
        # A first try given an idle connection at once went upstream as it started.
        self.up_started = self.started if self.acquiring and self.tries == 1 else perf_counter()
        conn.begin(self)
        body = self.body
        if body is None:
            conn.transport.write(self.head)  # type: ignore[union-attr]  # connected
        elif self.req_body_sent:
            # A retry of a request whose body went to the failed server: replay it (only
            # a request whose body is kept is retried). What was held is in it too.
            body.take_held()
            conn.write(b"".join((self.head, *(body.kept or ()))))
        elif body.held is not None:
            conn.write(b"".join((self.head, *body.take_held())))
            self.req_body_sent = True
            self.down.set_paused(PAUSE_PENDING, False)
        else:
            conn.transport.write(self.head)  # type: ignore[union-attr]
        self.end_sent = self.req_complete  # (begin armed the response clock then)
        if self.down.write_paused:
            conn.pause_reading(True)

    def connect_failed(self, error: BaseException) -> None:
        """Its server's pool could not give it a connection."""
        server = self.server
        if self.done or server is None:
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
        body = self.body
        if body is None:
            pool = self.pool
            limit = pool.balancing.retry_body_max if pool is not None else 0
            body = self.body = RequestBody(self.method in IDEMPOTENT_METHODS, limit)
        framed = encode_chunk(data) if self.chunked_request else data
        body.read(data, framed)
        if self.done:
            return
        # Held until the read that carried it has parsed cleanly (`forward_read`), or a
        # connection is attached.
        held = body.hold(framed)
        if self.up is None and held > self.down.ctx.settings.write_buffer_high:
            self.down.set_paused(PAUSE_PENDING, True)

    def request_complete(self) -> None:
        self.req_complete = True
        if self.chunked_request:
            body = self.body
            if body is None:  # an empty chunked body: its last chunk is all of it
                body = self.body = RequestBody(self.method in IDEMPOTENT_METHODS, 0)
            body.ended(LAST_CHUNK)
            if not self.done:
                body.hold(LAST_CHUNK)

    def forward_read(self) -> None:
        """A client read that carried more of this request parsed cleanly: send it on."""
        up = self.up
        if up is None or self.done:
            return  # held until a connection is attached
        body = self.body
        if body is not None and body.held is not None:
            up.write(b"".join(body.take_held()))
            self.req_body_sent = True
        if self.req_complete and not self.end_sent:
            self.end_sent = True
            up.request_sent()

    def upstream_paused(self, paused: bool) -> None:
        self.down.set_paused(PAUSE_UPSTREAM_FULL, paused)

    # -- response, from the upstream parser ------------------------------------------------

    def interim_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.http11 or self.resp_started:
            return  # HTTP/1.0 clients do not take 1xx responses
        self.out.append(interim_head(STATUS_LINES[status], scan_response_headers(headers)))

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        server = self.server
        if server is not None:
            server.answered(status)
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
        cookie = self.trace
        if self.set_sticky and server is not None and self.pool is not None:
            cookie += sticky_cookie(self.pool.balancing.sticky_cookie, server)
        parts = client_response_head(
            head,
            STATUS_LINES[status],
            out_body is BODY_CHUNKED,
            # HEAD and 304 keep the length of the representation they describe.
            out_body is BODY_LENGTH or self.head_request or status == 304,
            keep,
            self.http11,
            cookie,
        )
        out = self.out
        if out:  # a 1xx head still unsent
            out.extend(parts)
        else:
            self.out = parts  # `flush` joins the head with what body follows, once
        self.resp_started = True
        self.status = status

    def _switching_head(self, head: ResponseHead) -> None:
        if not self.upgrade or head.upgrade_value is None:
            # A 101 nobody asked for cannot be relayed as HTTP: treat it as broken.
            self.upstream_failed(502, "101 Switching Protocols without an upgrade request")
            return
        self.out.append(switching_head(STATUS_LINES[101], head, head.upgrade_value))
        self.resp_started = True
        self.status = 101

    def upgraded(self, conn: UpstreamProtocol, rest: bytes) -> None:
        """The backend switched protocols: both connections become one byte tunnel."""
        if self.done or not self.resp_started:
            conn.close()
            return
        self.flush()
        self.up = None
        self.done = True
        self.keep_alive = False
        assert conn.transport is not None
        self.down.tunnel_to(conn.transport, rest, self.early_data, self._tunnel_closed)

    def _tunnel_closed(self, tunnel: Tunnel) -> None:
        self.bytes_out += tunnel.bytes_out
        self.tunnelled_in = tunnel.bytes_in
        self._record(-1, self._elapsed_us())
        self._release_server()

    def replayable(self) -> bool:
        return replayable(self.method, self.req_complete, self.req_body_sent, self.body)

    def _retry_after_answer(self, server: Server, status: int, error: int) -> bool:
        """Drop the current upstream (its answer is not wanted) and retry elsewhere."""
        if self.pool is None or not self.pool.may_retry(self.tries):
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
            up.connections.release(
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
            # Closed before any answer (a kept-alive connection closed as we reused it, or a
            # dead backend): again, to another server if any (its other connections too).
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
        if self.resp_started:
            self.flush()
            self.abort_client()
            return
        self._answer(status, error, status in (502, 503, 504), None)

    def _answer(self, status: int, error: int, may_keep: bool, location: bytes | None) -> None:
        """Answer from here (a redirect to `location`, or the plain text of `status`),
        keeping the client connection when `may_keep` and the request allows it."""
        down = self.down
        keep = (
            may_keep
            and self.req_complete
            and self.keep_alive
            and not down.ctx.draining
            and not down.client_eof
        )
        self.keep_alive = keep
        self.resp_started = True
        self.status = status
        if location is None:
            response = error_response(status, keep)
        else:
            response = redirect_response(location, keep)
        self.bytes_out += len(response)
        down.write(response)
        self._finish(error)

    def abort_client(self) -> None:
        """The response cannot be completed: close the client connection (the upstream
        died or broke framing mid-response)."""
        self._drop_upstream()
        self.done = True
        self._record(UPSTREAM_5XX, self._elapsed_us())
        self._release_server()
        self.down.close()

    def _drop_upstream(self) -> None:
        up = self.up
        self.up = None
        self.wants_connection = False
        if up is not None:
            up.exchange = None
            up.abort()
        elif self.server is not None and isinstance(self.server.connections, ConnectionPool):
            self.server.connections.cancel(self)

    def _finish(self, error: int = -1) -> None:
        self.done = True
        self.wants_connection = False
        if error < 0:
            error = error_class(self.status)
        now = perf_counter()
        us = int((now - self.started) * 1_000_000)
        self._record(error, us)
        # The selector learns the server's own time: a wait for a connection says nothing.
        up_started = self.up_started
        self._release_server(int((now - up_started) * 1_000_000) if up_started else us)
        self.down.exchange_done(self)

    def _elapsed_us(self) -> int:
        return int((perf_counter() - self.started) * 1_000_000)

    def _record(self, error: int, us: int) -> None:
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
            bytes_in = len(self.head) + self.tunnelled_in
            if self.body is not None:
                bytes_in += self.body.size
            stats.record(self.status, us, bytes_in, self.bytes_out, error)
        if ctx.access_log is not None:
            server = self.server
            ctx.access_log.add(
                self.down.client_ip.encode(),
                self.method,
                self.target,
                self.http11,
                self.status,
                self.bytes_out,
                self.request_headers,
                server.label if server is not None else b"",
                self.up_started,
                self.started,
            )

    def client_lost(self) -> None:
        if not self.done:
            self._drop_upstream()
            self.done = True
            self._record(CLIENT_ABORT, self._elapsed_us())
            self._release_server()
