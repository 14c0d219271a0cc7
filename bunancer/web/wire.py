"""HTTP/1.1 as bytes for the web server, without I/O: what `server` reads and writes.

Owns response heads (status line, headers checked so none can split the head, the framing
and Connection headers, which are the server's alone), the fixed messages the server sends
on its own (100 Continue, a bare 500), and turning a request's target and
raw headers into the path, query and header dict a `Request` holds.
"""

from __future__ import annotations

import re

import httptools

from ..core.errors import STATUS_LINES, ProxyError
from ..core.framing import check_request_framing
from .app import HTTPError, Response, StreamResponse

NO_BODY_STATUSES = frozenset((204, 304))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    b'Content-Length: 26\r\nConnection: close\r\n\r\n{"error":"internal error"}'
)
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection"))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


# -- responses ---------------------------------------------------------------------------------


def serialise_head(
    status: int, content_type: str | None, headers: list[tuple[str, str]], extra: bytes
) -> bytes:
    """Status line and headers; raises ValueError for a header that could split the head."""
    lines = [STATUS_LINES[status]]
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


def connection_header(keep_alive: bool, http11: bool) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"" if http11 else b"Connection: keep-alive\r\n"


def response_head(response: Response, connection: bytes) -> bytes:
    """The head of a complete response: Content-Length, unless its status has no body."""
    status = response.status
    if status in NO_BODY_STATUSES:
        return serialise_head(status, None, response.headers, connection)
    length = b"Content-Length: %d\r\n" % len(response.body)
    return serialise_head(status, response.content_type, response.headers, length + connection)


def stream_head(response: StreamResponse, chunked: bool, connection: bytes) -> bytes:
    """The head of a StreamResponse; not `chunked`, its body (if any) ends at close."""
    status = response.status
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b""
    content_type = None if status in NO_BODY_STATUSES else response.content_type
    return serialise_head(status, content_type, response.headers, framing + connection)


# -- requests ----------------------------------------------------------------------------------


def check_framing(headers: dict[str, str], http11: bool, upgrade: bool) -> None:
    """The data plane's framing rules (core.framing), as a 400: a body behind an Upgrade,
    which llhttp ends at its head, would otherwise be parsed as a second request."""
    length = headers.get("content-length")
    coding = headers.get("transfer-encoding")
    if coding is None and not upgrade:
        return
    try:
        check_request_framing(
            http11,
            None if length is None else length.encode("latin-1"),
            None if coding is None else coding.encode("latin-1"),
            upgrade,
        )
    except ProxyError as error:
        raise HTTPError(400, "malformed request", detail=error.detail) from None


def join_headers(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers by lower-case name; a repeated one is joined into one value (RFC 9110 5.3),
    cookies with "; " as a browser would send them in one header."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers:
            headers[name] += ("; " if name == "cookie" else ", ") + value
        else:
            headers[name] = value
    return headers


def split_target(target: bytes) -> tuple[str, str]:
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
