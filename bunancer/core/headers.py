"""Header handling between the two sides: hop-by-hop filtering and head serialisation.

Hop-by-hop headers (RFC 9110 section 7.6.1) are dropped in both directions: Connection and
every header it names, Keep-Alive, Proxy-Connection, TE, Trailer, and Upgrade when the
exchange is not an upgrade. Framing headers (Content-Length, Transfer-Encoding) are
regenerated for each side by the proxy, which re-frames bodies. On requests, the client
address goes into X-Forwarded-For and Forwarded, and Via names the proxy.

Heads are built as flat lists of byte pieces joined once: a few hundred nanoseconds a
header, measured against per-line formatting (about the same) and concatenation (slower).
Item 0 of a head's `lines` is kept for the start line, which is known last; pieces are
appended one by one, which mypyc compiles to a plain append (an `extend` with a tuple
costs it a slice assignment, about four times as much).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .errors import ProxyError
from .framing import CHECKED_HOSTS, check_host

HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
_REQUEST_REPLACED: Final = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})
# Every request header name that needs more than copying.
_REQUEST_SPECIAL: Final = (
    HOP_BY_HOP
    | _FRAMING
    | _REQUEST_REPLACED
    | {b"host", b"x-forwarded-for", b"forwarded", b"expect", b"x-bunancer-debug"}
)
_RESPONSE_SPECIAL: Final = HOP_BY_HOP | _FRAMING


_NAMES_MAX: Final = 1024
_NAME_MAX_LENGTH: Final = 64


class NameKinds:
    """What a header name needs, per spelling: its lower-case form when it is one of
    `special`, b"" when copying it is all.

    A name of a length no special name has is ordinary without hashing it: most response
    headers (Date, Server, ETag, Content-Type, Cache-Control...) and some request ones.
    The table of lengths is bytes because that costs the compiled build least (an int bit
    mask and a set of lengths were measured too: bench/README.md). Other names are
    remembered per spelling, so lower() and the set lookup run once per spelling
    (compiled, bytes.lower() is a call by name, a dict get is not); the memory is bounded
    like framing.CHECKED_HOSTS: full, it starts over.

    One object per side, so requests and responses share this code: compiled, `of` is a
    direct C call; as Python the call per header costs a few per cent of a request.
    """

    __slots__ = ("lengths", "memory", "special")

    def __init__(self, special: frozenset[bytes]) -> None:
        self.special = special
        longest = max(len(name) for name in special)
        self.lengths = bytes(any(len(n) == size for n in special) for size in range(longest + 1))
        self.memory: dict[bytes, bytes] = {}

    def of(self, name: bytes) -> bytes:
        size = len(name)
        if size >= len(self.lengths) or not self.lengths[size]:
            return b""
        kind = self.memory.get(name)
        if kind is None:
            kind = self._classify(name)
        return kind

    def _classify(self, name: bytes) -> bytes:
        """A name not seen yet: what the memory says of it from now on."""
        lowered = name.lower()
        kind = lowered if lowered in self.special else b""
        if len(name) <= _NAME_MAX_LENGTH:
            if len(self.memory) >= _NAMES_MAX:
                self.memory.clear()
            self.memory[name] = kind
        return kind


_REQUEST_KINDS: Final = NameKinds(_REQUEST_SPECIAL)
_RESPONSE_KINDS: Final = NameKinds(_RESPONSE_SPECIAL)


@dataclass(frozen=True, slots=True)
class ForwardingOptions:
    forwarded: bool = True
    x_forwarded: bool = True
    via: bool = True
    https: bool = False  # the client's connection is TLS: proto=https


# Connection tokens that are not names of other headers to drop.
_NOT_HEADER_NAMES: Final = HOP_BY_HOP | {b"close"}


def _parse_connection(value: bytes) -> tuple[bool, frozenset[bytes]]:
    """Whether a Connection value asks for an upgrade, and the header names it lists."""
    tokens = frozenset(token.strip().lower() for token in value.split(b",") if token.strip())
    return b"upgrade" in tokens, tokens - _NOT_HEADER_NAMES


# The values nearly every client and backend send, answered without building sets.
_COMMON_CONNECTION_VALUES: Final = {
    value: _parse_connection(value)
    for value in (b"close", b"Close", b"keep-alive", b"Keep-Alive", b"upgrade", b"Upgrade")
}


def _connection_tokens(value: bytes) -> tuple[bool, frozenset[bytes]]:
    common = _COMMON_CONNECTION_VALUES.get(value)
    return common if common is not None else _parse_connection(value)


class RequestHead:
    """What the proxy learned from a request's headers, and the lines it forwards."""

    __slots__ = (
        "connection_header",
        "content_length",
        "debug",
        "expect_continue",
        "forwarded",
        "host",
        "lines",
        "transfer_encoding",
        "upgrade",
        "upgrade_value",
        "x_forwarded_for",
    )

    def __init__(self) -> None:
        self.lines: list[bytes] = [b""]  # [0]: the request line, set by build_request_head
        self.host: bytes | None = None
        # llhttp has checked both: one valid Content-Length, or a Transfer-Encoding ending
        # in chunked, never the two together.
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.x_forwarded_for: bytes | None = None
        self.forwarded: bytes | None = None
        self.expect_continue = False
        self.upgrade = False  # Connection names "upgrade"
        self.upgrade_value: bytes | None = None  # the Upgrade header
        # A Connection or Proxy-Connection header is present: llhttp's keep-alive answer
        # then depends on its value, not only on the HTTP version.
        self.connection_header = False
        # X-Bunancer-Debug: the API token asking why this server (never sent upstream).
        self.debug: bytes | None = None


def _add(lines: list[bytes], name: bytes, value: bytes) -> None:
    lines.append(name)
    lines.append(b": ")
    lines.append(value)
    lines.append(b"\r\n")


def _without(lines: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """Head lines (the start line, then name, ": ", value, CRLF for each header) without
    the headers in `names` (lower-case)."""
    kept = [lines[0]]
    for start in range(1, len(lines), 4):
        if lines[start].lower() not in names:
            kept.extend(lines[start : start + 4])
    return kept


def scan_request_headers(headers: list[tuple[bytes, bytes]], drop: bytes = b"") -> RequestHead:
    """Split request headers into forwarded lines and facts; raise ProxyError on bad Host.
    A header named `drop` is left out (the balancer sets it: a client must not forge it)."""
    head = RequestHead()
    lines = head.lines
    named: frozenset[bytes] | None = None
    for name, value in headers:
        lowered = _REQUEST_KINDS.of(name)
        if not lowered:
            _add(lines, name, value)
            continue
        if lowered == b"host":
            if head.host is not None:
                raise ProxyError(400, "more than one Host header")
            if value not in CHECKED_HOSTS:
                check_host(value)
            head.host = value
            _add(lines, name, value)
        elif lowered == b"content-length":
            head.content_length = value.strip()
        elif lowered == b"transfer-encoding":
            head.transfer_encoding = value.strip()
        elif lowered == b"upgrade":
            head.upgrade_value = value
        elif lowered == b"connection":
            head.connection_header = True
            upgrade, extra = _connection_tokens(value)
            if upgrade:
                head.upgrade = True
            if extra:
                named = extra if named is None else named | extra
        elif lowered == b"proxy-connection":
            head.connection_header = True
        elif lowered == b"x-forwarded-for":
            head.x_forwarded_for = (
                value if head.x_forwarded_for is None else head.x_forwarded_for + b", " + value
            )
        elif lowered == b"forwarded":
            head.forwarded = value if head.forwarded is None else head.forwarded + b", " + value
        elif lowered == b"expect":
            if value.lower() == b"100-continue":
                head.expect_continue = True
            _add(lines, name, value)
        elif lowered == b"x-bunancer-debug":
            head.debug = value
        # Hop-by-hop, framing and replaced X-Forwarded-* headers are dropped here.
    if named:
        # Rare: Connection names end-to-end-looking headers; they go in a second pass
        # (never Host or Expect, which a client cannot make hop-by-hop).
        head.lines = _without(lines, named - _REQUEST_SPECIAL)
    if drop:
        head.lines = _without(head.lines, frozenset((drop.lower(),)))
    return head


def https_location(host: bytes | None, target: bytes) -> bytes:
    """Where a redirect to HTTPS sends a request: the Host without its port (the default
    port, 443), the same path and query."""
    if host is None:
        raise ProxyError(400, "no Host to redirect to")
    colon = host.rfind(b":")
    if colon > host.rfind(b"]"):  # (`[::1]` has colons of its own)
        host = host[:colon]
    return b"https://" + host + target


def _forwarded_node(ip: str) -> bytes:
    return b'"[%s]"' % ip.encode() if ":" in ip else ip.encode()


def forwarding_lines(head: RequestHead, client_ip: str, options: ForwardingOptions) -> bytes:
    """X-Forwarded-*, Forwarded and Via lines for a request from `client_ip`."""
    parts: list[bytes] = []
    if options.x_forwarded:
        ip = client_ip.encode()
        xff = ip if head.x_forwarded_for is None else head.x_forwarded_for + b", " + ip
        proto = (
            b"\r\nX-Forwarded-Proto: https\r\n"
            if options.https
            else b"\r\nX-Forwarded-Proto: http\r\n"
        )
        parts.extend((b"X-Forwarded-For: ", xff, proto))
        if head.host:
            parts.extend((b"X-Forwarded-Host: ", head.host, b"\r\n"))
    if options.forwarded:
        node = (
            b"for="
            + _forwarded_node(client_ip)
            + (b";proto=https" if options.https else b";proto=http")
        )
        if head.host:
            node += b';host="' + head.host + b'"'
        value = node if head.forwarded is None else head.forwarded + b", " + node
        parts.extend((b"Forwarded: ", value, b"\r\n"))
    if options.via:
        parts.append(b"Via: 1.1 bunancer\r\n")
    return b"".join(parts)


def build_request_head(
    method: bytes, target: bytes, head: RequestHead, forwarding: bytes, body_framing: bytes
) -> bytes:
    """Serialise the request head sent upstream (always HTTP/1.1, persistent).

    `forwarding` comes from `forwarding_lines`; `body_framing` is the framing header line for
    the body as it will be sent upstream (``Content-Length: N\\r\\n``,
    ``Transfer-Encoding: chunked\\r\\n`` or empty).
    """
    lines = head.lines  # taken over: a head is built once
    lines[0] = method + b" " + target + b" HTTP/1.1\r\n"
    lines.append(forwarding)
    if body_framing:
        lines.append(body_framing)
    lines.append(b"\r\n")
    return b"".join(lines)


class ResponseHead:
    """Response header lines to forward, and the framing facts of the upstream message."""

    __slots__ = ("chunked", "content_length", "lines", "upgrade_value")

    def __init__(self) -> None:
        self.lines: list[bytes] = [b""]  # [0]: the status line, set by the proxy
        self.content_length: bytes | None = None
        self.chunked = False
        self.upgrade_value: bytes | None = None


def scan_response_headers(headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    head = ResponseHead()
    lines = head.lines
    named: frozenset[bytes] | None = None
    for name, value in headers:
        lowered = _RESPONSE_KINDS.of(name)
        if not lowered:
            _add(lines, name, value)
        elif lowered == b"content-length":
            head.content_length = value
        elif lowered == b"upgrade":
            head.upgrade_value = value
        elif lowered == b"transfer-encoding":
            # llhttp only accepts a Transfer-Encoding whose last coding is chunked... for
            # requests; a response may end with another coding and is then close-delimited.
            head.chunked = value.rstrip().lower().endswith(b"chunked")
        elif lowered == b"connection":
            extra = _connection_tokens(value)[1]
            if extra:
                named = extra if named is None else named | extra
    if named:
        head.lines = _without(lines, named)
    return head


def client_response_head(
    head: ResponseHead,
    status_line: bytes,
    chunked: bool,
    length: bool,
    keep_alive: bool,
    http11: bool,
    cookie: bytes,
) -> list[bytes]:
    """The response head for the client, in pieces joined once with the body that follows:
    our status line, the forwarded lines, the framing we chose (`chunked`, or the upstream's
    `length` kept), the connection's fate, and a cookie line (or b"")."""
    parts = head.lines
    parts[0] = status_line
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif length and head.content_length is not None:
        parts.append(b"Content-Length: ")
        parts.append(head.content_length)
        parts.append(b"\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    if cookie:
        parts.append(cookie)
    parts.append(b"\r\n")
    return parts


def interim_head(status_line: bytes, head: ResponseHead) -> bytes:
    """A 1xx head (100 Continue, 103 Early Hints) to relay as it is."""
    lines = head.lines
    lines[0] = status_line
    lines.append(b"\r\n")
    return b"".join(lines)


def switching_head(status_line: bytes, head: ResponseHead, upgrade: bytes) -> bytes:
    """The 101 head: Connection and Upgrade go back in (they are what it is about)."""
    lines = head.lines
    lines[0] = status_line
    lines.append(b"Connection: Upgrade\r\nUpgrade: ")
    lines.append(upgrade)
    lines.append(b"\r\n\r\n")
    return b"".join(lines)
