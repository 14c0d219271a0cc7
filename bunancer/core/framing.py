"""Sans-I/O HTTP/1.1 message framing rules (RFC 9112 section 6) and strictness checks.

httptools (llhttp) already rejects most smuggling vectors on its own: Content-Length with
Transfer-Encoding, differing or repeated Content-Length, a Transfer-Encoding whose last
coding is not chunked, bad chunk lines, control characters in header values and whitespace
before the colon. The checks here cover what it lets through: the request version, a
missing or repeated Host, fragments and malformed request targets.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Final

from .errors import ProxyError


class Body(IntEnum):
    """How a message body is delimited on the wire."""

    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    UNTIL_CLOSE = 3


# The members as module globals, for the hot path: on Python 3.11 `Body.LENGTH` goes through
# the enum machinery (slow), a global costs a few instructions.
BODY_NONE: Final = Body.NONE
BODY_LENGTH: Final = Body.LENGTH
BODY_CHUNKED: Final = Body.CHUNKED
BODY_UNTIL_CLOSE: Final = Body.UNTIL_CLOSE

LAST_CHUNK: Final = b"0\r\n\r\n"


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; the caller never passes an empty `data`."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def response_body(status: int, head_request: bool, has_length: bool, chunked: bool) -> Body:
    """How the upstream delimits its response body (RFC 9112 section 6.3)."""
    if head_request or status < 200 or status in (204, 304):
        return BODY_NONE
    if chunked:
        return BODY_CHUNKED
    if has_length:
        return BODY_LENGTH
    return BODY_UNTIL_CLOSE


def downstream_body(upstream: Body, client_http11: bool) -> Body:
    """How we delimit the same body towards the client.

    Length-delimited bodies pass as they are. Chunked and close-delimited bodies are sent
    chunked to HTTP/1.1 clients (so their connection survives) and close-delimited to
    HTTP/1.0 clients, which do not know chunked coding.
    """
    if upstream is BODY_NONE or upstream is BODY_LENGTH:
        return upstream
    return BODY_CHUNKED if client_http11 else BODY_UNTIL_CLOSE


IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def sniff_version(read: bytes, at: int) -> bool | None:
    """True for HTTP/1.1, False for HTTP/1.0, when the request line the parser accepted
    starts `read` and its method, a space and its target take `at` bytes; None when the
    bytes there do not say (the read starts inside a message or with an empty line, the
    line ends in a bare LF, another version): ask the parser then.

    Nothing else can match where it looks: the version's space sits exactly at `at` only
    in a line that starts the read, and a target holds no space or CR. httptools reports
    the version only as a str it formats on every call, a noticeable share of a request
    that comes alone on its connection (figures: bench/README.md)."""
    version = read[at : at + 11]  # a slice and a compare: cheaper compiled than startswith
    if version == b" HTTP/1.1\r\n":
        return True
    if version == b" HTTP/1.0\r\n":
        return False
    return None


def check_version(version: str) -> bool:
    """Return True for HTTP/1.1, False for HTTP/1.0; reject every other version."""
    if version == "1.1":
        return True
    if version == "1.0":
        return False
    raise ProxyError(505, f"HTTP/{version} is not supported")


def check_target(method: bytes, target: bytes) -> None:
    """Accept origin-form, absolute-form (http/https) and OPTIONS's asterisk-form."""
    if 35 in target:  # "#"; an int needle is a memchr, far cheaper than b"#"
        raise ProxyError(400, "request target has a fragment")
    if method == b"CONNECT":
        raise ProxyError(405, "CONNECT is not supported")
    if target[:1] == b"/":
        return
    if target == b"*" and method == b"OPTIONS":
        return
    lowered = target[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        return
    raise ProxyError(400, "malformed request target")


def check_request_framing(
    http11: bool, content_length: bytes | None, transfer_encoding: bytes | None, upgrade: bool
) -> None:
    """Framing that llhttp accepts but a proxy must not pass on.

    - HTTP/1.0 with Transfer-Encoding: the framing is faulty (RFC 9112 6.1); nginx answers
      400 too. Parsing what follows as the next request would be a desync.
    - An Upgrade request with a body: llhttp ends such a request at its head and treats
      the body as upgraded bytes, so the body would be read as a second request.
    """
    if transfer_encoding is not None and not http11:
        raise ProxyError(400, "HTTP/1.0 request with Transfer-Encoding")
    if upgrade and (transfer_encoding is not None or content_length not in (None, b"0")):
        raise ProxyError(400, "Upgrade request with a body")


# A bare authority: no whitespace, path, userinfo, query or list. Empty is allowed
# (RFC 9112 section 3.2: a target without authority is sent with an empty Host).
_HOST_VALUE: Final = re.compile(rb"[^\s/\\@?#,]*")


# Host values that passed: nearly every request repeats one, and the regex is not free.
# Bounded in count and in size (a DNS name is at most 253 bytes), so clients sending many
# long values cannot make it hold much: at most about 300 KiB.
CHECKED_HOSTS: Final[set[bytes]] = set()
_CHECKED_HOSTS_MAX: Final = 1024
_REMEMBERED_HOST_MAX: Final = 300


def check_host(host: bytes) -> None:
    """Reject a Host value that is not a bare authority; remember a short one that passed
    (callers skip the values in CHECKED_HOSTS)."""
    if _HOST_VALUE.fullmatch(host) is None:
        raise ProxyError(400, "invalid Host header")
    if len(host) <= _REMEMBERED_HOST_MAX:
        if len(CHECKED_HOSTS) >= _CHECKED_HOSTS_MAX:
            CHECKED_HOSTS.clear()
        CHECKED_HOSTS.add(host)
