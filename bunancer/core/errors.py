"""The one place that maps proxy errors to HTTP statuses and canned responses.

Every error the data plane answers itself (bad request, limits, timeouts, no server,
upstream failures) is a `ProxyError` carrying the status to answer with, like h11's
`error_status_hint`. Responses are pre-built bytes, built once per status.
"""

from __future__ import annotations

from functools import cache
from http import HTTPStatus
from typing import Final

REASONS: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class ProxyError(Exception):
    """An error the proxy answers itself with `status` (and closes the connection)."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(detail or REASONS.get(status, b"Error").decode())
        self.status = status
        self.detail = detail


@cache
def error_response(status: int, keep_alive: bool = False) -> bytes:
    """A complete small plain-text response for `status`, built once."""
    reason = REASONS.get(status, b"Error")
    body = b"%d %s\n" % (status, reason)
    extra = b"Retry-After: 1\r\n" if status == 503 else b""
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"%sConnection: %s\r\n\r\n%s" % (status, reason, len(body), extra, connection, body)
    )


def redirect_response(location: bytes, keep_alive: bool) -> bytes:
    """A 308 to `location`: the method and body are to be sent again there."""
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n"
        b"Connection: %s\r\n\r\n" % (location, connection)
    )


def _status_lines() -> tuple[bytes, ...]:
    lines = []
    for code in range(1000):  # llhttp accepts any three-digit status
        try:
            reason = REASONS.get(code) or HTTPStatus(code).phrase.encode()
        except ValueError:
            reason = b""
        lines.append(b"HTTP/1.1 %d %s\r\n" % (code, reason))
    return tuple(lines)


# Responses go out with the standard reason phrase for their status: clients ignore the
# phrase (RFC 9112 4), and not asking httptools for the backend's saves a callback each.
STATUS_LINES: Final = _status_lines()


class Overloaded(Exception):
    """No upstream connection free and the pool's queue of waiting requests is full."""
