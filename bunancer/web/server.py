"""The HTTP/1.1 side of the web apps (registry/admin API, dashboard), on the proxy's loop:
`serve()` and the Protocol per connection (reading with reader.py's `RequestReader`,
pipelining, timeouts, caps, writing responses and streams); handlers see app.py's types.
This is not the data plane, so simplicity wins over speed: request bodies are buffered (at
most `max_body` bytes) and each busy connection has one responder task that runs handlers
and answers pipelined requests in order. A `StreamResponse` goes out chunk by chunk as its
iterator yields, waits while the client's write buffer is over its high-water mark
(backpressure), and has its iterator cancelled and closed when the client goes away.

What a client can make the server hold is bounded, before any token is checked: connections
(`max_connections` in all, `max_per_client` per address; beyond them a 503 and close), a
read (`_READ_SIZE`: the socket is read into a buffer of that size), requests queued on a
connection (16, and `max_body` bytes of bodies; only one behind a streaming response), and
bodies: a request with a body is first shown to `App.check_head`, and one it refuses (no
token) is answered without its body being read."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..core.framing import LAST_CHUNK, encode_chunk  # chunks framed as the proxy frames them
from ..core.tls import HANDSHAKE_TIMEOUT
from .app import AnyResponse, App, StreamResponse, error_response
from .reader import Pending, RequestReader
from .wire import (
    CONTINUE,
    INTERNAL_ERROR,
    NO_BODY_STATUSES,
    connection_header,
    response_head,
    stream_head,
)

log = logging.getLogger("bunancer.web")

_MAX_PIPELINED = 16  # requests queued on one connection before reading pauses
_LINGER = 2.0  # after an error response, how long to discard what the client still sends
# At most this much is read from a socket at once (the loop would read 256 KiB): what one
# read carries is parsed before reading can pause, so it bounds what a client queues.
_READ_SIZE = 16 * 1024
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)


@dataclass(frozen=True, slots=True)
class _Settings:
    max_body: int
    header_timeout: float
    keepalive_timeout: float
    max_connections: int
    max_per_client: int


class _Census:
    """A listener's open connections, in all and per client address, for the caps; and the
    buffer every connection of the listener reads into (the loop fills it and calls
    `buffer_updated` before any other read, and nothing keeps a view of it)."""

    __slots__ = ("per_client", "read_buffer", "total")

    def __init__(self) -> None:
        self.total = 0
        self.per_client: dict[str, int] = {}
        self.read_buffer = memoryview(bytearray(_READ_SIZE))

    def enter(self, client: str, settings: _Settings) -> bytes | None:
        """Count a new connection from `client`, or the 503 to send it instead."""
        mine = self.per_client.get(client, 0)
        if self.total >= settings.max_connections:
            return _too_many("too many connections", settings.max_connections)
        if mine >= settings.max_per_client:
            return _too_many("too many connections from this address", settings.max_per_client)
        self.total += 1
        self.per_client[client] = mine + 1
        return None

    def leave(self, client: str) -> None:
        self.total -= 1
        left = self.per_client[client] - 1
        if left:
            self.per_client[client] = left
        else:
            del self.per_client[client]


def _too_many(message: str, limit: int) -> bytes:
    body = error_response(503, message, limit=limit).body
    return _TOO_MANY % (len(body), body)


async def serve(
    app: App,
    host: str,
    port: int,
    *,
    max_body: int = 64 * 1024,
    header_timeout: float = 10.0,
    keepalive_timeout: float = 30.0,
    max_connections: int = 256,
    max_per_client: int = 32,
    tls: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listen on `host:port` (0: any free port; over TLS with `tls`) and serve `app` on the
    running loop; the server's `sockets` give the bound address. `header_timeout` bounds how
    long a request (head and body) may take to arrive, and how long a new connection may stay
    silent; `keepalive_timeout` how long an idle connection stays open, and how long a client
    may leave a response unread before it is dropped. `max_connections` and `max_per_client`
    cap open connections (beyond: 503, closed)."""
    loop = asyncio.get_running_loop()
    settings = _Settings(
        max_body, header_timeout, keepalive_timeout, max_connections, max_per_client
    )
    census = _Census()
    return await loop.create_server(
        lambda: _Connection(app, settings, census, loop), host, port, ssl=tls,
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
    )  # fmt: skip


async def _close_iterator(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("error while closing a response stream")


class _Connection(asyncio.BufferedProtocol):
    """One client connection: its `RequestReader` fills a queue of requests, one responder
    task answers them in order. Timers are `call_later` handles: one for the request being
    read (or keep-alive, or lingering), one while a response waits for the client to read."""

    __slots__ = (
        "app",
        "census",
        "client_eof",
        "client_ip",
        "closed",
        "counted",
        "drain_waiter",
        "lingering",
        "loop",
        "queue",
        "queued_bytes",
        "read_paused",
        "reader",
        "reading_done",
        "responder",
        "settings",
        "shutting_down",
        "streaming",
        "timer",
        "transport",
        "write_paused",
    )

    def __init__(
        self, app: App, settings: _Settings, census: _Census, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.app = app
        self.settings = settings
        self.census = census
        self.counted = False  # in the census (refused connections are not)
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(app, self, settings.max_body)
        self.client_ip = ""
        self.queue: deque[Pending] = deque()
        self.queued_bytes = 0  # bodies in the queue
        self.responder: asyncio.Task[None] | None = None
        self.streaming = False  # the responder is inside a StreamResponse's iterator
        self.closed = False
        self.reading_done = False  # no further request will be parsed (error, or lingering)
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.client_eof = False
        self.shutting_down = False
        self.lingering = False
        self.timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "busy" if self.responder else "idle"
        return f"<_Connection {self.client_ip} {state} queued={len(self.queue)}>"

    # -- connection events ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client_ip = self.reader.client_ip = peer[0] if peer else ""
        self.reader.tls = transport.get_extra_info("sslcontext") is not None
        refusal = self.census.enter(self.client_ip, self.settings)
        if refusal is not None:
            self.reading_done = True
            self._write(refusal)
            self._close()
            return
        self.counted = True
        self.app.add_connection(self)
        # A silent new connection gets as long as a request head would, not a keep-alive.
        self._arm(self.settings.header_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.census.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.census.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.reading_done:
            return  # after an error: what follows is discarded, never parsed
        rejection = self.reader.feed(data)
        if rejection is not None:
            status, message, extra = rejection
            self._reject(status, message, **extra)

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.lingering or self.streaming:
            # A stream (events) may never end on its own: a client that stops sending has
            # gone away, and closing here cancels the stream's iterator.
            return False
        # Half-closed with requests to answer: keep writing, close when done.
        return self.responder is not None or bool(self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        if self.counted:
            self.counted = False
            self.census.leave(self.client_ip)
            self.app.discard_connection(self)
        self.queue.clear()
        self.queued_bytes = 0
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.streaming and self.responder is not None:
            # The iterator may be waiting for its next event: cancel it there. A handler
            # that is not streaming runs to completion and its response is dropped.
            self.responder.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def shut_down(self) -> None:
        """No more keep-alive; see `App.close_connections`."""
        self.shutting_down = True
        if self.closed:
            return
        if self.responder is None:
            self._close()
        elif self.streaming:
            self.responder.cancel()

    # -- timers --------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._on_timer)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        if self.lingering:
            self._close()
        elif self.reader.in_request:
            self._reject(408, "request timeout")
        elif self.responder is None and not self.queue:
            self._close()  # idle: silent since connecting, or keep-alive over

    def _on_send_timeout(self) -> None:
        # The client has left our response unread for keepalive_timeout: drop it.
        if not self.closed and self.transport is not None:
            self.transport.abort()

    # -- what the reader hears (ReaderOwner) ---------------------------------------------------

    def request_begun(self) -> None:
        self._arm(self.settings.header_timeout)

    def request_read(self, pending: Pending) -> None:
        self._disarm()  # the request arrived in time
        self._enqueue(pending)

    def request_refused(self, pending: Pending) -> None:
        self._stop_reading()
        self._enqueue(pending)

    def may_continue(self) -> None:
        # Only when nothing else is being written: a 100 must not land inside a response.
        if self.responder is None and not self.queue:
            self._write(CONTINUE)

    # -- answering -----------------------------------------------------------------------------

    def _enqueue(self, pending: Pending) -> None:
        self.queue.append(pending)
        self.queued_bytes += pending.size
        if self._queue_full():
            self._pause_reading()
        if self.responder is None:
            self.responder = self.loop.create_task(self._respond())

    def _queue_full(self) -> bool:
        """Whether to stop reading until the responder takes a request off the queue."""
        queue = self.queue
        return (
            len(queue) >= _MAX_PIPELINED
            or self.queued_bytes >= self.settings.max_body
            or (self.streaming and len(queue) > 0)  # a stream may last as long as the client
        )

    def _stop_reading(self) -> None:
        """No further request will be parsed on this connection."""
        self.reading_done = True
        self.reader.stop()
        self._disarm()
        self._pause_reading()

    def _reject(self, status: int, message: str, **extra: Any) -> None:
        """A request we will not parse further: answer in turn, then close."""
        if self.reading_done:
            return
        self._stop_reading()
        self._enqueue(Pending(None, error_response(status, message, **extra), False, True, False))

    async def _respond(self) -> None:
        """Answer queued requests in order, then leave (an idle connection has no task)."""
        try:
            while self.queue and not self.closed:
                pending = self.queue.popleft()
                self.queued_bytes -= pending.size
                if not self._queue_full() and not self.reading_done:
                    self._resume_reading()
                response: AnyResponse | None = pending.response
                if response is None:
                    assert pending.request is not None
                    response = await self.app.handle(pending.request, pending.refusal)
                if self.closed:
                    if isinstance(response, StreamResponse):
                        await _close_iterator(response.chunks)
                    return
                keep_alive = pending.keep_alive and not self.shutting_down
                keep_alive = await self._send(response, pending, keep_alive)
                if not keep_alive:
                    # After an error the client may still be sending (a refused body).
                    lingering = pending.request is None or pending.refusal is not None
                    self._close_after_response(lingering)
                    return
                if self.write_paused:
                    await self._drain()
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception:
            log.exception("error while answering on %r", self)
            self._abort()
            return
        finally:
            self.responder = None
        if self.closed:
            return
        if self.client_eof or (self.shutting_down and not self.reader.in_request):
            self._close()  # (a request begun before the client's EOF can never complete)
        elif not self.reader.in_request:
            self._arm(self.settings.keepalive_timeout)

    async def _send(self, response: AnyResponse, pending: Pending, keep_alive: bool) -> bool:
        """Write one response; whether the connection may stay open after it."""
        if isinstance(response, StreamResponse):
            return await self._send_stream(response, pending, keep_alive)
        try:
            head = response_head(response, connection_header(keep_alive, pending.http11))
        except ValueError:
            log.exception("invalid response to %r", pending.request)
            self._write(INTERNAL_ERROR)
            return False
        body = b"" if pending.head or response.status in NO_BODY_STATUSES else response.body
        if not body:
            self._write(head)
        elif not self.closed and self.transport is not None:
            self.transport.writelines((head, body))  # one send, without copying the body
        return keep_alive

    async def _send_stream(
        self, response: StreamResponse, pending: Pending, keep_alive: bool
    ) -> bool:
        """Write the head of a StreamResponse at once (event-stream clients wait for it),
        then its body; whether the connection may stay open after it."""
        chunked = pending.http11  # HTTP/1.0 knows no chunks: the body ends at close
        keep_alive = keep_alive and chunked
        no_body = pending.head or response.status in NO_BODY_STATUSES
        connection = connection_header(keep_alive, pending.http11)
        try:
            head = stream_head(response, chunked and not no_body, connection)
        except ValueError:
            log.exception("invalid response to %r", pending.request)
            await _close_iterator(response.chunks)
            self._write(INTERNAL_ERROR)
            return False
        self._write(head)
        if no_body:
            await _close_iterator(response.chunks)
            return keep_alive
        return await self._stream(response, chunked) and keep_alive

    async def _stream(self, response: StreamResponse, chunked: bool) -> bool:
        """Send the body of a StreamResponse; whether it ended cleanly."""
        iterator = aiter(response.chunks)
        self.streaming = True
        if self._queue_full():
            self._pause_reading()
        try:
            async for chunk in iterator:
                if self.closed:
                    return False
                data = chunk.encode() if isinstance(chunk, str) else chunk
                if not data:
                    continue  # a zero-size chunk would end the body
                self._write(encode_chunk(data) if chunked else data)
                if self.write_paused:
                    await self._drain()
            if self.closed:
                return False
            if chunked:
                self._write(LAST_CHUNK)
            return True
        except asyncio.CancelledError:
            if self.shutting_down and chunked and not self.closed:
                self._write(LAST_CHUNK)  # a clean end on shutdown; the caller closes
            raise
        except Exception:
            # The head is out: close without the last chunk so the client sees the cut.
            log.exception("error in the response stream of %r", self)
            return False
        finally:
            self.streaming = False
            await _close_iterator(iterator)

    async def _drain(self) -> None:
        """Wait until the client has read enough of what we wrote (or is gone)."""
        if not self.write_paused or self.closed:
            return
        waiter = self.loop.create_future()
        self.drain_waiter = waiter
        stalled = self.loop.call_later(self.settings.keepalive_timeout, self._on_send_timeout)
        try:
            await waiter
        finally:
            stalled.cancel()
            self.drain_waiter = None

    # -- writing and closing -------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.closed and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.closed and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def _close(self) -> None:
        """Close after what is buffered has been sent."""
        if not self.closed:
            self.closed = True
            self._disarm()
            if self.transport is not None:
                self.transport.close()

    def _abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._disarm()
            if self.transport is not None:
                self.transport.abort()

    def _close_after_response(self, lingering: bool) -> None:
        transport = self.transport
        if not lingering or transport is None or self.closed or not transport.can_write_eof():
            self._close()
            return
        # The client may still be sending (a body we refused). Closing with
        # unread input makes the kernel send RST, which can destroy our response before the
        # client reads it; instead end our side and discard input for a while (like nginx).
        self.lingering = True
        self.reading_done = True
        transport.write_eof()
        self._resume_reading()
        self._arm(_LINGER)
