"""Upstream side: one Protocol per backend connection.

`UpstreamProtocol` parses responses with httptools and hands each event to the exchange
it currently serves; its deadline is the response timeout while an exchange waits, and the
idle timeout while the connection sits in its server's `ConnectionPool`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from .deadline import Deadline

if TYPE_CHECKING:
    from .connections import ConnectionPool

    # The one kind of exchange a connection serves. Named as the class, not as a Protocol,
    # so that compiled calls into it are direct (see bunancer.native).
    from .exchange import Exchange


class UpstreamProtocol(asyncio.Protocol):
    """One connection to a backend; serves one exchange at a time."""

    __deletable__ = ("parser",)  # for mypyc: `_release` deletes it
    __slots__ = (
        "_discard",
        "_headers",
        "_interim",
        "_upgraded",
        "closed",
        "connections",
        "deadline",
        "exchange",
        "got_bytes",
        "parser",
        "reading_paused",
        "reused",
        "transport",
    )

    def __init__(self, connections: ConnectionPool) -> None:
        self.connections = connections  # the server's pool, which opened this connection
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.deadline = Deadline(connections.loop, self._on_deadline)
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
        settings = self.connections.settings
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
            self.deadline.set(self.connections.settings.response_timeout)
            exchange.flush()

    def _switch(self, exchange: Exchange, rest: bytes) -> None:
        """The backend switched protocols: this connection leaves the pool for a tunnel."""
        self.exchange = None
        self.deadline.cancel()
        self.connections.detach(self)
        exchange.upgraded(self, rest)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # Break the cycles through the parser and the deadline (see DownstreamProtocol).
        self.deadline.close()
        del self.parser
        self.connections.forget(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            # The backend is not reading what we send: that is its clock running.
            self.deadline.set(self.connections.settings.response_timeout)
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
            self.deadline.set(self.connections.settings.response_timeout)
        else:
            # The response clock starts when the request is sent (`request_sent`); while
            # the client uploads, its own body-idle clock governs.
            self.deadline.clear()

    def request_sent(self) -> None:
        if self.exchange is not None and not self.got_bytes:
            self.deadline.set(self.connections.settings.response_timeout)

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
                self.deadline.set(self.connections.settings.response_timeout)

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
        self._finish(exchange, self.parser.should_keep_alive())

    def _finish(self, exchange: Exchange, keep_alive: bool) -> None:
        self.exchange = None
        self.reused = True
        exchange.response_complete(keep_alive and not self.closed)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("idle" if self.exchange is None else "active")
        return f"<UpstreamProtocol {self.connections.address} {state}>"
