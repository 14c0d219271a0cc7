"""DownstreamProtocol: one client connection.

It parses requests with httptools callbacks (no task or coroutine per request), turns each
head into an `Exchange` (bunancer.core.plan decides what to send upstream), and answers
pipelined requests in order: the first is active, the next wait in a queue, bodies buffered
up to a bound (reading pauses beyond it). A request's bytes go upstream only once the read
that carried them parsed cleanly (or ended it before an error). One lazily re-armed deadline
serves every timeout; a first head is watched by the listener's sweep. Response bytes made
while one upstream read is parsed are written once."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import httptools

from .deadline import Deadline
from .errors import ProxyError
from .exchange import Exchange
from .framing import check_target
from .headers import RequestHead, build_request_head, https_location, scan_request_headers
from .listener import (
    PAUSE_DONE,
    PAUSE_PIPELINE,
    PAUSE_UPGRADE,
    T_BODY,
    T_FIRST,
    T_HEADER,
    T_KEEPALIVE,
    T_NONE,
    T_SEND,
    ListenerContext,
)
from .plan import absolute_form, add_host, check_head_size, framing_lines, has_body, is_http11
from .tunnel import Tunnel

log = logging.getLogger("bunancer.proxy")


class DownstreamProtocol(asyncio.Protocol):
    """One client connection."""

    __deletable__ = ("parser",)  # for mypyc: `_release` deletes it
    __slots__ = (
        # per connection
        "_forwarding",
        "_forwarding_host",
        "_pause",
        "_subject",
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
        "starting",
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
        self.deadline: Deadline | None = None  # made on first use (not for a single request)
        self.timeout_kind = T_NONE
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
        # An exchange due to start once the read that carried its head has parsed cleanly.
        self.starting: Exchange | None = None
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
        self._subject = ctx.subject_line(transport) if settings.client_subject_header else b""
        ctx.connections.add(self)
        # The first head is due `header_timeout` from the listener's next sweep, which
        # watches for it (no timer of our own); a later head, from its first byte.
        if not ctx.sweeping:
            ctx.start_sweep()
        self.timeout_kind = T_FIRST

    def data_received(self, data: bytes) -> None:
        if self._pause & PAUSE_DONE:
            return  # an error ended reading; what follows is not parsed
        if self.upgrading is not None and self._pause & PAUSE_UPGRADE:
            self.upgrading.early_data += data  # arrived before reading paused
            return
        was_in_head = self.in_head
        # Between messages, the next one's request line starts this read (on_headers_complete
        # reads the version from it; on_message_complete forgets it for a pipelined next).
        self.line_read = None if was_in_head or self.parsing is not None else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._forward_read()  # what came before the upgrade's end parsed cleanly
            self._after_upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, ProxyError):
                self._reject_read(cause.status)
            else:
                log.exception("internal error while handling a request", exc_info=cause)
                self._reject_read(500)
            return
        except httptools.HttpParserError:
            self._reject_read(400)
            return
        self._forward_read()
        if self.in_head:
            # A head still incomplete after this read. Its clock starts now: a head that
            # arrives whole in one read (the usual case) never arms a timer at all. (The
            # first head's clock is the listener's sweep.)
            kind = self.timeout_kind
            if kind != T_HEADER and kind != T_FIRST:
                self._set_deadline(T_HEADER, self.ctx.settings.header_timeout)
            if self.head_raw < 0:
                # It began in this read, after the requests this read completed (pipelined):
                # its bytes are counted from the next read on, not this whole read's.
                self.head_raw = 0
            else:
                # Bound what the parser buffers for a head that keeps coming.
                self.head_raw += len(data)
                if self.head_raw > self.ctx.settings.max_header_bytes:
                    self._reject(431)

    def _forward_read(self) -> None:
        """The whole read parsed cleanly: now what it carried goes upstream."""
        starting = self.starting
        if starting is not None:
            self.starting = None
            starting.start()
        active = self.active
        if active is not None and active is not starting:
            active.forward_read()

    def eof_received(self) -> bool:
        # A client that closes mid-request has given up on it (nginx's 499): dropped, counted
        # as a client abort (half-closed clients still waiting are too rare to wait for).
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
        """Break this object's reference cycles once its connection is over: the parser and
        the deadline refer to it, so every closed connection would otherwise wait for the
        cyclic GC, which walks every object still waiting. Nothing parses after this."""
        if self.deadline is not None:
            self.deadline.close()
        del self.parser

    def pause_writing(self) -> None:
        self.write_paused = True
        active = self.active
        if active is not None and active.up is not None:
            active.up.pause_reading(True)
            self._set_deadline(T_SEND, self.ctx.settings.body_idle_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        active = self.active
        if self.timeout_kind == T_SEND:
            self._set_deadline(T_NONE, 0)
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
            self.timeout_kind = T_NONE  # (and no sweep takes it for a late first head)
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
            if self.timeout_kind == T_BODY:
                self._timer().clear()  # we stopped reading: the client is not idle
        elif before and not after:
            transport.resume_reading()
            if self.timeout_kind == T_BODY:
                self._timer().set(self.ctx.settings.body_idle_timeout)

    def detach(self) -> None:
        """The transport went to a tunnel: this protocol is done with it."""
        self.closed = True
        self.active = self.parsing = self.upgrading = None
        self.queue.clear()
        self._release()

    def tunnel_to(
        self,
        upstream: asyncio.Transport,
        to_client: bytes,
        to_server: bytes,
        on_close: Callable[[Tunnel], None],
    ) -> None:
        """The backend switched protocols: this connection and `upstream` become one byte
        tunnel (the listener's until it closes); this protocol is done."""
        ctx = self.ctx
        tunnel = Tunnel(ctx.loop, ctx.settings.tunnel_idle_timeout)

        def closed(tunnel: Tunnel) -> None:
            ctx.tunnels.discard(tunnel)
            on_close(tunnel)

        tunnel.on_close = closed
        ctx.tunnels.add(tunnel)
        ctx.connections.discard(self)
        client = self.transport
        self.detach()
        assert client is not None
        tunnel.client.adopt(client)
        tunnel.server.adopt(upstream)
        tunnel.link(to_client=to_client, to_server=to_server)

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
            self.set_paused(PAUSE_UPGRADE, False)
            if exchange.early_data:
                self.ctx.loop.call_soon(self._feed_held, exchange.early_data)
        if self.queue:
            following = self.queue.popleft()
            self.active = following
            if len(self.queue) < self.ctx.settings.max_pipelined:
                self.set_paused(PAUSE_PIPELINE, False)
            # Deferred: we may still be inside the upstream parser's callback.
            self.ctx.loop.call_soon(following.start)
            return
        if self.ctx.draining or self.client_eof:
            if self.parsing is None and not self.in_head:
                self.close()
            return
        if not self.in_head and self.parsing is None:
            self.timeout_kind = T_KEEPALIVE
            self._timer().set(self.ctx.settings.keepalive_timeout)

    # -- timeouts ---------------------------------------------------------------------------------

    def _timer(self) -> Deadline:
        deadline = self.deadline
        if deadline is None:
            deadline = self.deadline = Deadline(self.ctx.loop, self.on_timeout)
        return deadline

    def _set_deadline(self, kind: int, seconds: float) -> None:
        self.timeout_kind = kind
        if kind != T_NONE:
            self._timer().set(seconds)
        elif self.deadline is not None:
            self.deadline.clear()

    def on_timeout(self) -> None:
        kind = self.timeout_kind
        self.timeout_kind = T_NONE
        if kind in (T_HEADER, T_FIRST):
            if self.in_head:
                self._reject(408)
            else:
                self.close()  # connected and said nothing
        elif kind == T_BODY:
            exchange = self.parsing
            if exchange is not None and not exchange.done:
                self.set_paused(PAUSE_DONE, True)
                exchange.fail(408)
            else:
                self.close()
        elif kind in (T_KEEPALIVE, T_SEND):
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
        # Limits: checked once the head is whole; until then data_received's byte count.
        self.headers.append((name, value))
        self.head_size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        settings = self.ctx.settings
        check_head_size(len(self.headers), self.head_size, settings)
        parser = self.parser
        method = parser.get_method()
        target = self.url
        if target[:1] != b"/" or 35 in target or method == b"CONNECT":  # "#" is 35
            check_target(method, target)  # the usual origin-form passes without a call
        head = scan_request_headers(self.headers, settings.client_subject_header)
        keep_alive = parser.should_keep_alive()
        http11 = is_http11(parser, method, self.url, keep_alive, head, self.line_read)
        if target[:1] != b"/" and target != b"*":
            target, self.headers = absolute_form(target, self.headers)
            head = scan_request_headers(self.headers, settings.client_subject_header)
        if head.host is None:
            assert self.transport is not None
            add_host(head, http11, self.transport.get_extra_info("sockname"))
        chunked = head.transfer_encoding is not None
        upgrade = (
            (chunked or head.upgrade) and parser.should_upgrade() and head.upgrade_value is not None
        )
        framing = framing_lines(head, http11, upgrade, settings)
        routes = self.ctx.routes
        # (No rules, the usual case: the default pool, without the call to `match`.)
        pool = routes.match(head.host, target) if routes.routes else routes.default
        request_head = build_request_head(method, target, head, self._forwarding_of(head), framing)
        exchange = Exchange(self, pool, method, request_head, http11, keep_alive, chunked)
        if settings.redirect_https:  # (a plain HTTP listener sending everything to https://)
            exchange.location = https_location(head.host, target)
        elif pool is not None and (pool.per_request or head.debug is not None):  # (rare)
            pool.prepare(exchange, self.client_ip, target, self.headers, head)
        if upgrade:
            exchange.upgrade = True
            self.upgrading = exchange
        if self.ctx.access_log is not None:
            exchange.target = target
            exchange.request_headers = self.headers
        self._queue(exchange, has_body(head))

    def _forwarding_of(self, head: RequestHead) -> bytes:
        """Forwarding lines: the connection's own while its Host stays, else the listener's."""
        if (
            head.host == self._forwarding_host
            and self._forwarding
            and head.x_forwarded_for is None
            and head.forwarded is None
        ):
            return self._forwarding
        forwarding = self.ctx.forwarding.get(head, self.client_ip) + self._subject
        if head.x_forwarded_for is None and head.forwarded is None:
            self._forwarding_host = head.host
            self._forwarding = forwarding
        return forwarding

    def _queue(self, exchange: Exchange, body: bool) -> None:
        """The request's body (if any) is read next; its exchange starts now, or waits its
        turn behind the pipelined ones before it."""
        settings = self.ctx.settings
        self.parsing = exchange
        if body:
            self._set_deadline(T_BODY, settings.body_idle_timeout)
        else:
            self._set_deadline(T_NONE, 0)
        if self.active is None:
            self.active = self.starting = exchange  # started once the read parses cleanly
        else:
            self.queue.append(exchange)
            if len(self.queue) >= settings.max_pipelined:
                self.set_paused(PAUSE_PIPELINE, True)

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None:
            return
        settings = self.ctx.settings
        if settings.max_body_bytes:
            read = exchange.body.size if exchange.body is not None else 0
            if read + len(body) > settings.max_body_bytes:
                raise ProxyError(413)
        exchange.request_body(body)
        if self.timeout_kind == T_BODY:
            self._timer().set(settings.body_idle_timeout)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        self.parsing = None
        self.line_read = None
        if self.timeout_kind == T_BODY:
            self._set_deadline(T_NONE, 0)
        if exchange is not None:
            exchange.request_complete()

    # -- rarer paths ------------------------------------------------------------------------------

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
        self.set_paused(PAUSE_UPGRADE, True)

    def _reject_read(self, status: int) -> None:
        """The current read failed to parse. A request it completed cleanly before the
        error still goes; the one the error is in sends nothing of this read upstream."""
        starting = self.starting
        self.starting = None
        if starting is not None and not starting.req_complete:  # the error is in it
            self.set_paused(PAUSE_DONE, True)
            self.in_head = False
            self.parsing = None
            starting.local_status = status
            starting.keep_alive = False
            starting.start()
            return
        if starting is not None:
            starting.start()  # it was complete before the error: it goes
        self._reject(status)

    def _reject(self, status: int) -> None:
        """A request we cannot parse or accept: answer `status` in turn, then close."""
        self.set_paused(PAUSE_DONE, True)
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
