"""What a web application is written against: requests, responses, errors and `App`.

Owns `Request` (a parsed request, with cookies, JSON and validated bodies), `Response`,
`StreamResponse`, `HTTPError` (answered as `{"error": message, ...}`), the response helpers
and `App`: routing through `router.Router`, body validation, middlewares, and errors mapped
to JSON responses. Nothing here sees a socket: `server.serve()` runs an `App` on a listener.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ..problems import field_path
from .router import Match, MethodNotAllowed, NotFound, ParamValue, Router

log = logging.getLogger("bunancer.web")

M = TypeVar("M", bound=BaseModel)
HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"


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
        "refused",
        "route",
        "tls",
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
        tls: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query if query is not None else {}
        self.headers = headers if headers is not None else {}  # lower-case names
        self.body = body
        self.client_ip = client_ip
        self.http_version = http_version
        self.tls = tls  # it came over a TLS connection to this listener
        self.params: dict[str, ParamValue] = {}
        self.route: str | None = None  # the matched pattern, set before middlewares run
        self.data: Any = None
        self.refused: HTTPError | None = None  # what `App.check_head` refused it with
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
            raise validation_error(error) from None


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


def validation_error(error: ValidationError) -> HTTPError:
    """A body the model refused, as the answer: 422 naming the (first) field, or 400 for
    JSON that does not parse (a dashboard form read into the same model gets the same)."""
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


class Connection(Protocol):
    """What `App` needs of a server's connection: a way to end it at shutdown."""

    def shut_down(self) -> None: ...


Admission = Callable[[Request], HTTPError | None]


class App:
    """A router and middlewares. Routing happens first (so `request.params` and
    `request.route` are set when middlewares run), then the middlewares in order around
    the endpoint: 404/405, body validation, the handler. `refusal` turns an exception a
    handler raised into the HTTPError to answer (None: it is a bug, answered 500).

    `admission` sees the head of a request that has a body, before the body is read, and
    may refuse it (a missing token): the server then answers without reading the body. It
    must refuse only what a middleware would refuse anyway, as the answer still goes
    through the middlewares (`handle(request, refusal)`)."""

    __slots__ = ("_connections", "admission", "middlewares", "refusal", "router")

    def __init__(
        self,
        router: Router[Handler] | None = None,
        middlewares: Iterable[Middleware] = (),
        refusal: Callable[[Exception], HTTPError | None] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.router: Router[Handler] = router if router is not None else Router()
        self.middlewares: list[Middleware] = list(middlewares)
        self.refusal = refusal
        self.admission = admission
        self._connections: set[Connection] = set()  # open ones, for shutdown

    def middleware(self, middleware: Middleware) -> Middleware:
        """Decorator form of `middlewares.append`; the first added runs outermost."""
        self.middlewares.append(middleware)
        return middleware

    def _route(self, request: Request) -> None:
        try:
            found = self.router.match(request.method, request.path)
        except (NotFound, MethodNotAllowed) as error:
            request._match = error
        else:
            request._match = found
            request.params = found.params
            request.route = found.pattern

    def check_head(self, request: Request) -> HTTPError | None:
        """For the server, before reading a body: whether `admission` refuses the request."""
        if self.admission is None:
            return None
        self._route(request)
        return self.admission(request)

    async def handle(self, request: Request, refusal: HTTPError | None = None) -> AnyResponse:
        """The response to `request` (or, through the middlewares, the `refusal` that
        `check_head` gave it); never raises (except cancellation)."""
        self._route(request)
        request.refused = refusal
        call: CallNext = self._endpoint if refusal is None else _refuse(refusal)
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
        except Exception as error:
            refused = self.refusal(error) if self.refusal is not None else None
            if refused is not None:
                return refused.response()
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal error")

    def add_connection(self, connection: Connection) -> None:
        """For the server: a connection now open, until `discard_connection`."""
        self._connections.add(connection)

    def discard_connection(self, connection: Connection) -> None:
        self._connections.discard(connection)

    def close_connections(self) -> None:
        """For shutdown (after `server.close()`): idle connections close now, streams end
        (their iterators are cancelled), busy connections close after their response."""
        for connection in list(self._connections):
            connection.shut_down()


def refusing(check: Admission) -> Middleware:
    """The middleware that answers `check`'s refusal (the same check as an admission: a
    request refused from its head is not checked again, so a check runs once per request)."""

    async def middleware(request: Request, call_next: CallNext) -> AnyResponse:
        refusal = request.refused or check(request)
        if refusal is not None:
            raise refusal
        return await call_next(request)

    return middleware


def first_refusal(*checks: Admission) -> Admission:
    """An admission that gives the first refusal among `checks`."""

    def check(request: Request) -> HTTPError | None:
        for each in checks:
            refusal = each(request)
            if refusal is not None:
                return refusal
        return None

    return check


def _refuse(refusal: HTTPError) -> CallNext:
    async def call(request: Request) -> AnyResponse:
        return refusal.response()

    return call


def _bind(middleware: Middleware, call_next: CallNext) -> CallNext:
    async def call(request: Request) -> AnyResponse:
        return await middleware(request, call_next)

    return call
