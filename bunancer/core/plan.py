"""The rules that turn a parsed request head into what goes upstream. Sans-I/O.

Given the head the parser read (method, target, header fields, what llhttp said about
keep-alive and upgrades), these functions check the limits and framing rules (each
problem a `ProxyError` with the status to answer), resolve an absolute-form target, and
build the framing and forwarding lines of the head sent to the backend. Tested with bytes
in tests/core/test_plan.py; the client connection (downstream.py) only calls them.
"""

from __future__ import annotations

from typing import Any, Final

import httptools

from .errors import ProxyError
from .framing import check_request_framing, check_version, sniff_version
from .headers import ForwardingOptions, RequestHead, forwarding_lines
from .settings import ListenerSettings

# Kept forwarding lines per (client address, Host), per listener; cleared when full.
FORWARDING_CACHE_SIZE: Final = 4096


def check_head_size(count: int, size: int, settings: ListenerSettings) -> None:
    """Too many header fields, or too many bytes of them: 431."""
    if count > settings.max_headers or size + 4 * count > settings.max_header_bytes:
        raise ProxyError(431)


def absolute_form(
    target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``GET http://host/path``: the path, and the headers with the target's authority as
    Host (RFC 9112 3.2.2)."""
    try:
        # Any: httptools' stub types `port` as int, so compiled code would reject the None
        # a target without a port has (a TypeError where a request should be answered).
        url: Any = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise ProxyError(400, "malformed absolute request target") from None
    if not url.host:
        raise ProxyError(400, "absolute request target without host")
    authority = url.host if url.port is None else b"%s:%d" % (url.host, url.port)
    path = url.path or b"/"
    if url.query:
        path += b"?" + url.query
    rewritten = [(n, v) for n, v in headers if n.lower() != b"host"]
    rewritten.append((b"Host", authority))
    return path, rewritten


def framing_lines(
    head: RequestHead, http11: bool, upgrade: bool, settings: ListenerSettings
) -> bytes:
    """The message-framing lines of the head sent upstream: the length, the transfer coding
    (chunked is re-applied by us), or the protocol switch asked for; checks that the
    request's own framing is unambiguous (else 400) and its length allowed (else 413)."""
    content_length = head.content_length
    if head.transfer_encoding is not None or head.upgrade:
        check_request_framing(http11, content_length, head.transfer_encoding, upgrade)
    if content_length is not None:
        if settings.max_body_bytes and int(content_length) > settings.max_body_bytes:
            raise ProxyError(413)
        return b"Content-Length: " + content_length + b"\r\n"
    if head.transfer_encoding is not None:
        # Codings before the final chunked (rare) stay; chunked is re-applied by us.
        return b"Transfer-Encoding: " + head.transfer_encoding + b"\r\n"
    if upgrade:
        # A protocol switch (WebSocket): the backend must see it asked for.
        assert head.upgrade_value is not None
        return b"Connection: Upgrade\r\nUpgrade: " + head.upgrade_value + b"\r\n"
    return b""


def is_http11(
    parser: httptools.HttpRequestParser,
    method: bytes,
    url: bytes,
    keep_alive: bool,
    head: RequestHead,
    line_read: bytes | None,
) -> bool:
    """HTTP/1.1 (True) or 1.0 (False); another version raises 505. `line_read`: the read
    that began with this request line, if it did."""
    if keep_alive and not head.connection_header:
        # llhttp accepts HTTP/0.9, 1.0, 1.1 and 2.0 only, and without a Connection or
        # Proxy-Connection header keeps only 1.1 alive (tests/core/test_llhttp.py pins
        # both): this is 1.1, known without get_http_version(), which formats a str.
        return True
    if line_read is not None:
        sniffed = sniff_version(line_read, len(method) + 1 + len(url))
        if sniffed is not None:
            return sniffed
    version = parser.get_http_version()
    return version == "1.1" or check_version(version)


def add_host(head: RequestHead, http11: bool, sockname: tuple[str, int]) -> None:
    """A request without Host: a 400 for HTTP/1.1. HTTP/1.0 may leave it out, but goes
    upstream as 1.1, which must carry one (nginx answers 400 without): the address the
    client reached, the authority of its effective URI then (RFC 9110 7.2)."""
    if http11:
        raise ProxyError(400, "HTTP/1.1 request without Host")
    ip, port = sockname[0], sockname[1]
    host = (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode()
    head.host = host
    head.lines += (b"Host: ", host, b"\r\n")


def has_body(head: RequestHead) -> bool:
    """Whether body bytes follow the head (its idle timeout then applies)."""
    return head.transfer_encoding is not None or (
        head.content_length is not None and head.content_length != b"0"
    )


class ForwardingCache:
    """Forwarding lines (X-Forwarded-*, Forwarded, Via) by client address and Host.

    The client address is fixed per connection and Host rarely changes, so the lines are
    built once per pair and reused by the next requests and connections of that client."""

    __slots__ = ("lines", "options")

    def __init__(self, options: ForwardingOptions) -> None:
        self.options = options
        self.lines: dict[tuple[str, bytes | None], bytes] = {}

    def get(self, head: RequestHead, client_ip: str) -> bytes:
        if head.x_forwarded_for is not None or head.forwarded is not None:
            # The client's own forwarding headers are appended to: nothing to reuse.
            return forwarding_lines(head, client_ip, self.options)
        key = (client_ip, head.host)
        lines = self.lines.get(key)
        if lines is None:
            if len(self.lines) >= FORWARDING_CACHE_SIZE:
                self.lines.clear()
            lines = forwarding_lines(head, client_ip, self.options)
            self.lines[key] = lines
        return lines
