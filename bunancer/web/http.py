"""A small HTTP/1.1 server for the web apps (registry/admin API, dashboard) on the proxy's loop.

Owns what handlers see (`Request`, `Response`, `StreamResponse`, `HTTPError`), `App` (routing
through `router.Router`, body validation, middlewares, errors mapped to JSON responses) and
`serve()`: one `asyncio.Protocol` per connection, parsing with httptools.

This is not the data plane, so simplicity wins over speed: request bodies are buffered (at
most `max_body` bytes) and each busy connection has one responder task that runs handlers
and answers pipelined requests in order. A `StreamResponse` goes out chunk by chunk as its
iterator yields, waits while the client's write buffer is over its high-water mark
(backpressure), and has its iterator cancelled and closed when the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qs

import httptools
import orjson
from pydantic import BaseModel, ValidationError

from ..config import field_path
from .router import Match, MethodNotAllowed, NotFound, ParamValue, Router

log = logging.getLogger("bunancer.web")

M = TypeVar("M", bound=BaseModel)
HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"

_MAX_PIPELINED = 16  # requests queued on one connection before reading pauses
_MAX_HEAD = 64 * 1024  # request line and headers; beyond it: 431
_LINGER = 2.0  # after an error response, how long to discard what the client still sends
_NO_BODY_STATUSES = frozenset((204, 304))
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection"))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LAST_CHUNK = b"0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    b'Content-Length: 26\r\nConnection: close\r\n\r\n{"error":"internal error"}'
)


def _status_lines() -> dict[int, bytes]:
    return {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode()) for s in HTTPStatus}


_STATUS_LINES = _status_lines()  # built once; responses never carry a custom phrase


# -- what handlers see -------------------------------------------------------------------------


class HTTPError(Exception):
    """Raise from a handler or middleware to answer `{"error": message, **extra}`."""

    def __init__(
        self, status: int, message: str, *, headers: HeadersArg = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.extra = extra

    def response(self) -> Response:
        response = error_response(self.status, self.message, **self.extra)
        response.headers.extend(_header_list(self.headers))
        return response


class Request:
    """One parsed request. `path` is as sent (still percent-encoded, no query); `params`
    holds the decoded, typed path parameters; `data` the validated body model, if any."""

    __slots__ = (
        "_cookies",
        "_match",
        "body",
        "client_ip",
        "data",
        "headers",
        "http_version",
        "method",
        "params",
        "path",
        "query",
        "route",
    )

    def __init__(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        client_ip: str = "",
        http_version: str = "1.1",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query if query is not None else {}
        self.headers = headers if headers is not None else {}  # lower-case names
        self.body = body
        self.client_ip = client_ip
        self.http_version = http_version
        self.params: dict[str, ParamValue] = {}
        self.route: str | None = None  # the matched pattern, set before middlewares run
        self.data: Any = None
        self._cookies: dict[str, str] | None = None
        self._match: Match[Handler] | NotFound | MethodNotAllowed | None = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} from {self.client_ip or '?'}>"

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = _parse_cookies(self.headers.get("cookie", ""))
        return self._cookies

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as error:
            raise HTTPError(400, "invalid JSON", detail=str(error)) from None

    def parse(self, model: type[M]) -> M:
        """The body validated as `model`: 400 when it is not JSON, 422 naming the field."""
        try:
            # JSON-mode validation: the rules pydantic applies to JSON input (strict
            # models still take ISO datetimes and UUIDs as strings).
            return model.model_validate_json(self.body)
        except ValidationError as error:
            raise _validation_error(error) from None


def _parse_cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies.setdefault(name, value)  # browsers send the most specific path first
    return cookies


def _field(loc: tuple[int | str, ...]) -> str | None:
    """A pydantic location as `servers[0].port`, the form config errors use; None for the
    body as a whole."""
    return field_path(loc) or None


def _validation_error(error: ValidationError) -> HTTPError:
    items = error.errors(include_url=False)
    if items and items[0]["type"] == "json_invalid":
        return HTTPError(400, "invalid JSON", detail=items[0]["msg"])
    errors = []
    for item in items:
        detail = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            detail = "unknown field"
        errors.append({"field": _field(tuple(item["loc"])), "detail": detail})
    first = errors[0]
    if len(errors) == 1:
        return HTTPError(422, "validation failed", field=first["field"], detail=first["detail"])
    return HTTPError(
        422, "validation failed", field=first["field"], detail=first["detail"], errors=errors
    )


def _header_list(headers: HeadersArg) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _check_status(status: int) -> None:
    # 1xx are interim responses the server sends itself; a handler answers with a final one.
    if not 200 <= status <= 599:
        raise ValueError(f"response status must be 200-599, got {status}")


class Response:
    """A complete response; `headers` is a list of pairs so Set-Cookie can repeat.
    Content-Length, Transfer-Encoding and Connection are the server's to set."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes | str = b"",
        headers: HeadersArg = None,
        content_type: str = TEXT,
    ) -> None:
        _check_status(status)
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = _header_list(headers)
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class StreamResponse:
    """A response whose body is sent as `chunks` yields it, chunked (close-delimited to
    HTTP/1.0 clients). When the client disconnects, the iterator is cancelled and closed,
    so an async generator's `finally` runs."""

    __slots__ = ("chunks", "content_type", "headers", "status")

    def __init__(
        self,
        chunks: AsyncIterable[bytes | str],
        status: int = 200,
        headers: HeadersArg = None,
        content_type: str = TEXT,
    ) -> None:
        _check_status(status)
        self.chunks = chunks
        self.status = status
        self.headers = _header_list(headers)
        self.content_type = content_type


AnyResponse = Response | StreamResponse
Handler = Callable[[Request], Awaitable[AnyResponse]]
CallNext = Callable[[Request], Awaitable[AnyResponse]]
Middleware = Callable[[Request, CallNext], Awaitable[AnyResponse]]


def _json_default(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_response(data: Any, status: int = 200, headers: HeadersArg = None) -> Response:
    """`data` as JSON (orjson: dataclasses, datetimes, enums; pydantic models too)."""
    return Response(status, orjson.dumps(data, default=_json_default), headers, JSON)


def text_response(text: str, status: int = 200, headers: HeadersArg = None) -> Response:
    return Response(status, text, headers, TEXT)


def html_response(html: str, status: int = 200, headers: HeadersArg = None) -> Response:
    return Response(status, html, headers, HTML)


def error_response(status: int, message: str, **extra: Any) -> Response:
    return json_response({"error": message, **extra}, status)


# -- the application ---------------------------------------------------------------------------


class App:
    """A router and middlewares. Routing happens first (so `request.params` and
    `request.route` are set when middlewares run), then the middlewares in order around
    the endpoint: 404/405, body validation, the handler."""

    __slots__ = ("_connections", "middlewares", "router")

    def __init__(
        self, router: Router[Handler] | None = None, middlewares: Iterable[Middleware] = ()
    ) -> None:
        self.router: Router[Handler] = router if router is not None else Router()
        self.middlewares: list[Middleware] = list(middlewares)
        self._connections: set[_Connection] = set()

    def middleware(self, middleware: Middleware) -> Middleware:
        """Decorator form of `middlewares.append`; the first added runs outermost."""
        self.middlewares.append(middleware)
        return middleware

    async def handle(self, request: Request) -> AnyResponse:
        """The response to `request`; never raises (except cancellation)."""
        try:
            found = self.router.match(request.method, request.path)
        except (NotFound, MethodNotAllowed) as error:
            request._match = error
        else:
            request._match = found
            request.params = found.params
            request.route = found.pattern
        call: CallNext = self._endpoint
        for middleware in reversed(self.middlewares):
            call = _bind(middleware, call)
        try:
            response = await call(request)
            if not isinstance(response, Response | StreamResponse):
                raise TypeError(f"a middleware returned {type(response).__name__}, not a Response")
            return response
        except HTTPError as error:
            return error.response()
        except Exception:
            log.exception("unhandled error in middleware for %s %s", request.method, request.path)
            return error_response(500, "internal error")

    async def _endpoint(self, request: Request) -> AnyResponse:
        # Errors become responses here too, so middlewares see the status of every request.
        found = request._match
        try:
            if isinstance(found, MethodNotAllowed):
                allow = ", ".join(found.allowed)
                raise HTTPError(
                    405, "method not allowed", headers={"Allow": allow}, allowed=found.allowed
                )
            if found is None or isinstance(found, NotFound):
                raise HTTPError(404, "not found")
            if found.body_model is not None:
                request.data = request.parse(found.body_model)
            response = await found.handler(request)
            if not isinstance(response, Response | StreamResponse):
                raise TypeError(
                    f"handler for {found.pattern!r} returned {type(response).__name__}, "
                    "not a Response"
                )
            return response
        except HTTPError as error:
            return error.response()
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal error")

    def close_connections(self) -> None:
        """For shutdown (after `server.close()`): idle connections close now, streams end
        (their iterators are cancelled), busy connections close after their response."""
        for connection in list(self._connections):
            connection.shut_down()


def _bind(middleware: Middleware, call_next: CallNext) -> CallNext:
    async def call(request: Request) -> AnyResponse:
        return await middleware(request, call_next)

    return call


# -- the server --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    max_body: int
    header_timeout: float
    keepalive_timeout: float


@dataclass(slots=True)
class _Pending:
    """A parsed request waiting its turn, or (request None) an error to answer, then close."""

    request: Request | None
    response: Response | None
    keep_alive: bool
    http11: bool
    head: bool


async def serve(
    app: App,
    host: str,
    port: int,
    *,
    max_body: int = 64 * 1024,
    header_timeout: float = 10.0,
    keepalive_timeout: float = 30.0,
) -> asyncio.Server:
    """Listen on `host:port` (0: any free port) and serve `app` on the running loop; the
    server's `sockets` give the bound address.

    `header_timeout` bounds how long a request (head and body) may take to arrive, and how
    long a new connection may stay silent; `keepalive_timeout` how long an idle connection
    stays open, and how long a client may leave a response unread before it is dropped."""
    loop = asyncio.get_running_loop()
    settings = _Settings(max_body, header_timeout, keepalive_timeout)
    return await loop.create_server(lambda: _Connection(app, settings, loop), host, port)


def _serialise_head(
    status: int, content_type: str | None, headers: list[tuple[str, str]], extra: bytes
) -> bytes:
    """Status line and headers; raises ValueError for a header that could split the head."""
    lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    if content_type is not None and not any(n.lower() == "content-type" for n, _ in headers):
        headers = [("Content-Type", content_type), *headers]
    for name, value in headers:
        if name.lower() in _FRAMING_HEADERS:
            continue  # framing and connection management are ours
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    lines.append(extra)
    lines.append(b"\r\n")
    return b"".join(lines)


def _connection_header(keep_alive: bool, http11: bool) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"" if http11 else b"Connection: keep-alive\r\n"


async def _close_iterator(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("error while closing a response stream")


class _Connection(asyncio.Protocol):
    """One client connection: httptools callbacks fill a queue of requests, one responder
    task answers them in order. Timers are `call_later` handles: one for the request being
    read (or keep-alive, or lingering), one while a response waits for the client to read."""

    __slots__ = (
        "app",
        "body",
        "body_size",
        "client_eof",
        "client_ip",
        "closed",
        "drain_waiter",
        "head_bytes",
        "headers",
        "http11",
        "in_head",
        "in_request",
        "lingering",
        "loop",
        "method",
        "parser",
        "queue",
        "raw_headers",
        "read_paused",
        "reading_done",
        "responder",
        "settings",
        "shutting_down",
        "streaming",
        "target",
        "timer",
        "transport",
        "url",
        "write_paused",
    )

    def __init__(self, app: App, settings: _Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.settings = settings
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.queue: deque[_Pending] = deque()
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
        # The request being read.
        self.in_request = False
        self.in_head = False
        self.head_bytes = 0
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers: dict[str, str] = {}
        self.method = ""
        self.target: tuple[str, str] = ("/", "")
        self.http11 = True
        self.body: list[bytes] = []
        self.body_size = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else "busy" if self.responder else "idle"
        return f"<_Connection {self.client_ip} {state} queued={len(self.queue)}>"

    # -- connection events ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self.app._connections.add(self)
        # A silent new connection gets as long as a request head would, not a keep-alive.
        self._arm(self.settings.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.reading_done:
            return  # after an error: what follows is discarded, never parsed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops after a request asking for Upgrade (already queued). We never
            # switch protocols, so what follows is the next request.
            rest = data[upgrade.args[0] :]
            if rest:
                self.data_received(rest)
            return
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, HTTPError):
                self._reject(cause.status, cause.message, **cause.extra)
            else:
                log.error("error while parsing a request", exc_info=cause)
                self._reject(500, "internal error")
            return
        except httptools.HttpParserError as error:
            self._reject(400, "malformed request", detail=str(error))
            return
        if self.in_head:
            # Bounds what httptools buffers for a head that keeps coming.
            self.head_bytes += len(data)
            if self.head_bytes > _MAX_HEAD:
                self._reject(431, "request head too large", limit=_MAX_HEAD)

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
        self.app._connections.discard(self)
        self.queue.clear()
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
        elif self.in_request:
            self._reject(408, "request timeout")
        elif self.responder is None and not self.queue:
            self._close()  # idle: silent since connecting, or keep-alive over

    def _on_send_timeout(self) -> None:
        # The client has left our response unread for keepalive_timeout: drop it.
        if not self.closed and self.transport is not None:
            self.transport.abort()

    # -- reading requests (httptools callbacks) ------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_request = True
        self.in_head = True
        self.head_bytes = 0
        self.url = b""
        self.raw_headers = []
        self.body = []
        self.body_size = 0
        self._arm(self.settings.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        self.method = parser.get_method().decode("ascii")
        self.http11 = parser.get_http_version() == "1.1"
        self.target = _split_target(self.url)
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name in headers:
                headers[name] += ("; " if name == "cookie" else ", ") + value
            else:
                headers[name] = value
        self.headers = headers
        self.raw_headers = []
        length = headers.get("content-length")
        if length is not None and int(length) > self.settings.max_body:
            raise HTTPError(413, "request body too large", limit=self.settings.max_body)
        expect = headers.get("expect")
        if (
            expect is not None
            and expect.lower() == "100-continue"
            and self.http11
            and self.responder is None
            and not self.queue
        ):
            # Only when nothing else is being written: a 100 must not land inside a response.
            self._write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.settings.max_body:  # chunked bodies have no length up front
            raise HTTPError(413, "request body too large", limit=self.settings.max_body)
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        self._disarm()  # the request arrived in time
        path, query = self.target
        request = Request(
            self.method,
            path,
            query=parse_qs(query, keep_blank_values=True) if query else {},
            headers=self.headers,
            body=b"".join(self.body),
            client_ip=self.client_ip,
            http_version="1.1" if self.http11 else "1.0",
        )
        self.body = []
        pending = _Pending(
            request, None, self.parser.should_keep_alive(), self.http11, self.method == "HEAD"
        )
        self._enqueue(pending)

    # -- answering -----------------------------------------------------------------------------

    def _enqueue(self, pending: _Pending) -> None:
        self.queue.append(pending)
        if len(self.queue) >= _MAX_PIPELINED:
            self._pause_reading()
        if self.responder is None:
            self.responder = self.loop.create_task(self._respond())

    def _reject(self, status: int, message: str, **extra: Any) -> None:
        """A request we will not parse further: answer in turn, then close."""
        if self.reading_done:
            return
        self.reading_done = True
        self.in_request = self.in_head = False
        self._disarm()
        self._pause_reading()
        self._enqueue(_Pending(None, error_response(status, message, **extra), False, True, False))

    async def _respond(self) -> None:
        """Answer queued requests in order, then leave (an idle connection has no task)."""
        try:
            while self.queue and not self.closed:
                pending = self.queue.popleft()
                if len(self.queue) < _MAX_PIPELINED and not self.reading_done:
                    self._resume_reading()
                response: AnyResponse | None = pending.response
                if response is None:
                    assert pending.request is not None
                    response = await self.app.handle(pending.request)
                if self.closed:
                    if isinstance(response, StreamResponse):
                        await _close_iterator(response.chunks)
                    return
                keep_alive = pending.keep_alive and not self.shutting_down
                keep_alive = await self._send(response, pending, keep_alive)
                if not keep_alive:
                    self._close_after_response(lingering=pending.request is None)
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
        if self.client_eof or (self.shutting_down and not self.in_request):
            self._close()  # (a request begun before the client's EOF can never complete)
        elif not self.in_request:
            self._arm(self.settings.keepalive_timeout)

    async def _send(self, response: AnyResponse, pending: _Pending, keep_alive: bool) -> bool:
        """Write one response; whether the connection may stay open after it."""
        connection = _connection_header(keep_alive, pending.http11)
        status = response.status
        body = b""
        try:
            if isinstance(response, StreamResponse):
                chunked = pending.http11  # HTTP/1.0 knows no chunks: the body ends at close
                keep_alive = keep_alive and chunked
                connection = _connection_header(keep_alive, pending.http11)
                no_body = pending.head or status in _NO_BODY_STATUSES
                framing = b"Transfer-Encoding: chunked\r\n" if chunked and not no_body else b""
                head = _serialise_head(
                    status,
                    None if status in _NO_BODY_STATUSES else response.content_type,
                    response.headers,
                    framing + connection,
                )
            elif status in _NO_BODY_STATUSES:
                head = _serialise_head(status, None, response.headers, connection)
            else:
                body = response.body
                length = b"Content-Length: %d\r\n" % len(body)
                head = _serialise_head(
                    status, response.content_type, response.headers, length + connection
                )
        except ValueError:
            log.exception("invalid response to %r", pending.request)
            if isinstance(response, StreamResponse):
                await _close_iterator(response.chunks)
            self._write(_INTERNAL_ERROR)
            return False
        if isinstance(response, StreamResponse):
            self._write(head)  # at once: event-stream clients wait for the head
            if no_body:
                await _close_iterator(response.chunks)
                return keep_alive
            return await self._stream(response, chunked) and keep_alive
        if pending.head or not body:
            self._write(head)
        elif not self.closed and self.transport is not None:
            self.transport.writelines((head, body))  # one send, without copying the body
        return keep_alive

    async def _stream(self, response: StreamResponse, chunked: bool) -> bool:
        """Send the body of a StreamResponse; whether it ended cleanly."""
        iterator = aiter(response.chunks)
        self.streaming = True
        try:
            async for chunk in iterator:
                if self.closed:
                    return False
                data = chunk.encode() if isinstance(chunk, str) else chunk
                if not data:
                    continue  # a zero-size chunk would end the body
                self._write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
                if self.write_paused:
                    await self._drain()
            if self.closed:
                return False
            if chunked:
                self._write(_LAST_CHUNK)
            return True
        except asyncio.CancelledError:
            if self.shutting_down and chunked and not self.closed:
                self._write(_LAST_CHUNK)  # a clean end on shutdown; the caller closes
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
        # After an error the client may still be sending (a body we refused). Closing with
        # unread input makes the kernel send RST, which can destroy our response before the
        # client reads it; instead end our side and discard input for a while (like nginx).
        self.lingering = True
        self.reading_done = True
        transport.write_eof()
        self._resume_reading()
        self._arm(_LINGER)


def _split_target(target: bytes) -> tuple[str, str]:
    """(path, query) of an origin-form or absolute-form target; anything else is a 400."""
    if not target.startswith(b"/") and b"://" not in target:
        raise HTTPError(400, "unsupported request target")
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise HTTPError(400, "malformed request target") from None
    path = (url.path or b"/").decode("utf-8", "replace")
    query = (url.query or b"").decode("utf-8", "replace")
    return path, query
