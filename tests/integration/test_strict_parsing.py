"""Strict parsing: a request the proxy must reject gets the right status and a closed
connection, and no second request hidden in it ever reaches a backend.

Every malicious request embeds ``GET /smuggled-<token>``, placed where it would be a
request of its own under the other reading of the message (or right after it, for head
errors). After the rejection, the backends' ``/log`` is read directly (not through the
proxy) and must not hold that request line.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable

import pytest

from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import RawClient, Response, wait_for

LIMITS = """
[limits]
max_request_line = 1024
max_header_bytes = 4096
max_headers = 20
max_body_bytes = 1000
"""

MAX_BODY = 1000


@pytest.fixture(scope="module")
def limited_proxy(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    """A proxy over both backends with small request limits (fast limit tests)."""
    return start_proxy([b.url for b in backends], LIMITS)


# -- helpers -------------------------------------------------------------------------------------


def backend_log(backend: Backend) -> list[str]:
    """Every request line the backend has seen, asked directly (not through the proxy)."""
    with RawClient(backend.port, timeout=5) as direct:
        response = direct.request("GET", "/log")
    assert response.status == 200, response
    return json.loads(response.body)["requests"]


def smuggled_request(token: str) -> bytes:
    return b"GET /smuggled-%s HTTP/1.1\r\nHost: t\r\n\r\n" % token.encode()


def assert_rejected(port: int, raw: bytes, status: int) -> Response:
    """Send `raw` on a fresh connection: expect `status` (any error: 0), Connection: close,
    then a close."""
    with RawClient(port, timeout=5) as client:
        client.send(raw)
        response = client.read_response()
        assert response.status == status or (not status and response.status >= 400), (
            response.status,
            response.body,
        )
        assert response.header("Connection") == "close"
        assert client.is_closed(timeout=3), "the proxy kept the connection open"
        assert client.buffer == b"", f"bytes after the error response: {client.buffer!r}"
    return response


def assert_not_smuggled(proxy: Proxy, backends: list[Backend], token: str) -> None:
    """No backend saw a request line with `token` in it (``/smuggled-<token>``).

    A barrier request goes through the proxy afterwards until every backend has logged it,
    so anything the proxy forwarded before it had time to arrive. It also shows the proxy
    still serves after the attack.
    """
    barrier = f"/barrier-{token}"

    def barrier_seen_everywhere() -> bool:
        with proxy.client(timeout=5) as client:
            assert client.request("GET", barrier).status == 200
        return all(any(barrier in line for line in backend_log(b)) for b in backends)

    wait_for(barrier_seen_everywhere, timeout=5)
    lines = [line for backend in backends for line in backend_log(backend)]
    smuggled = [line for line in lines if token in line and barrier not in line]
    assert smuggled == [], f"a backend received a smuggled request: {smuggled}"


def warm_up(proxy: Proxy) -> None:
    """Idle kept-alive connections to the backends, so a request is written upstream at
    once, inside the read that carried it (not after a connect)."""
    with proxy.client(timeout=5) as client:
        for _ in range(6):
            assert client.request("GET", "/").status == 200


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- rejected requests ---------------------------------------------------------------------------

Build = Callable[[bytes], bytes]

# (id, expected status, build(smuggled request) -> raw bytes to send)
MALFORMED: list[tuple[str, int, Build]] = [
    (
        # CL.TE: by Content-Length the smuggled request is body, by chunked it follows.
        "content-length-and-transfer-encoding",
        400,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s" % (5 + len(s), s)
        ),
    ),
    (
        # TE.CL: by chunked the smuggled request is a chunk, by Content-Length it follows.
        "transfer-encoding-and-content-length",
        400,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 4\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(s), s)
        ),
    ),
    (
        "two-differing-content-lengths",
        400,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(s), s)
        ),
    ),
    *[
        (
            f"transfer-encoding-{name}",
            400,
            lambda s, coding=coding: (
                b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: %s\r\n\r\n0\r\n\r\n%s"
                % (coding, s)
            ),
        )
        for name, coding in [
            ("chunked-gzip", b"chunked, gzip"),
            ("gzip", b"gzip"),
            ("xchunked", b"xchunked"),
            ("chunked-then-gzip-field", b"chunked\r\nTransfer-Encoding: gzip"),
        ]
    ],
    (
        "invalid-chunk-size",
        400,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n%s" % s
        ),
    ),
    (
        "chunk-data-without-crlf",
        400,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc%s0\r\n\r\n" % s
        ),
    ),
    (
        "nul-in-header-value",
        400,
        lambda s: b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n%s" % s,
    ),
    (
        "bare-cr-in-header-value",
        400,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nX-A: a\rTransfer-Encoding: chunked\r\n"
            b"Content-Length: %d\r\n\r\n0\r\n\r\n%s" % (5 + len(s), s)
        ),
    ),
    (
        "whitespace-before-colon-host",
        400,
        lambda s: b"GET /a HTTP/1.1\r\nHost : t\r\n\r\n%s" % s,
    ),
    (
        "whitespace-before-colon-transfer-encoding",
        400,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
            b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n%s" % (5 + len(s), s)
        ),
    ),
    (
        "obs-fold",
        400,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nX-A: a\r\n"
            b" Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s" % (5 + len(s), s)
        ),
    ),
    ("http11-without-host", 400, lambda s: b"GET /a HTTP/1.1\r\n\r\n%s" % s),
    (
        "two-host-headers",
        400,
        lambda s: b"GET /a HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n%s" % s,
    ),
    ("fragment-in-target", 400, lambda s: b"GET /a#b HTTP/1.1\r\nHost: t\r\n\r\n%s" % s),
    ("http-2.0", 505, lambda s: b"GET /a HTTP/2.0\r\nHost: t\r\n\r\n%s" % s),
    (
        "connect",
        405,
        lambda s: b"CONNECT b.test:443 HTTP/1.1\r\nHost: b.test:443\r\n\r\n%s" % s,
    ),
]


@pytest.mark.parametrize(
    ("status", "build"), [(st, b) for _, st, b in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_request_rejected_without_smuggling(
    proxy: Proxy, backends: list[Backend], status: int, build: Build
) -> None:
    token = uuid.uuid4().hex
    assert_rejected(proxy.port, build(smuggled_request(token)), status)
    assert_not_smuggled(proxy, backends, token)


# A read that fails to parse part-way: nothing of the request the error is in reaches a
# backend, not even its head, which parsed cleanly before its body framing broke.
BAD_READS: list[tuple[str, Callable[[str], bytes]]] = [
    (
        "bad-first-chunk-size",
        lambda t: (
            b"POST /sha256?%s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ZZ\r\nabc\r\n0\r\n\r\n" % t.encode()
        ),
    ),
    (
        "bad-second-chunk-size",
        lambda t: (
            b"POST /sha256?%s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\nZZ\r\nabc\r\n0\r\n\r\n" % t.encode()
        ),
    ),
    (
        "body-over-the-limit-after-the-head",
        lambda t: (
            b"POST /sha256?%s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%s0\r\n\r\n" % (t.encode(), chunk(b"x" * 2000))
        ),
    ),
]


@pytest.mark.parametrize("build", [b for _, b in BAD_READS], ids=[n for n, _ in BAD_READS])
def test_a_request_whose_read_fails_to_parse_sends_nothing_upstream(
    limited_proxy: Proxy, backends: list[Backend], build: Callable[[str], bytes]
) -> None:
    token = uuid.uuid4().hex
    warm_up(limited_proxy)
    response = assert_rejected(limited_proxy.port, build(token), 0)
    assert response.status in (400, 413)
    assert_not_smuggled(limited_proxy, backends, token)


def test_a_clean_request_ahead_of_a_bad_one_in_the_same_read_is_served(
    proxy: Proxy, backends: list[Backend]
) -> None:
    token = uuid.uuid4().hex
    warm_up(proxy)
    with RawClient(proxy.port, timeout=5) as client:
        client.send(
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /sha256?%s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ZZ\r\n\r\n" % token.encode()
        )
        assert client.read_response().status == 200
        assert client.read_response().status == 400
        assert client.is_closed(timeout=3)
    assert_not_smuggled(proxy, backends, token)


OVER_LIMIT: list[tuple[str, int, Build]] = [
    (
        "request-line",
        414,
        lambda s: b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n%s" % (b"a" * 2000, s),
    ),
    (
        "header-bytes",
        431,
        lambda s: b"GET /a HTTP/1.1\r\nHost: t\r\nX-Big: %s\r\n\r\n%s" % (b"b" * 5000, s),
    ),
    (
        "header-count",
        431,
        lambda s: (
            b"GET /a HTTP/1.1\r\nHost: t\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(30))
            + b"\r\n"
            + s
        ),
    ),
    (
        # The smuggled request opens the over-long body: parsing it as the next request
        # after answering 413 would forward it.
        "body-content-length",
        413,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n%s%s"
            % (s, b"x" * (2000 - len(s)))
        ),
    ),
    (
        "body-chunked",
        413,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n%s"
            % (chunk(b"x" * 2000), s)
        ),
    ),
    (
        "body-chunked-in-small-chunks",
        413,
        lambda s: (
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n%s"
            % (chunk(b"y" * 300) * 4, s)
        ),
    ),
]


@pytest.mark.parametrize(
    ("status", "build"), [(st, b) for _, st, b in OVER_LIMIT], ids=[m[0] for m in OVER_LIMIT]
)
def test_over_limit_rejected_without_smuggling(
    limited_proxy: Proxy, backends: list[Backend], status: int, build: Build
) -> None:
    token = uuid.uuid4().hex
    assert_rejected(limited_proxy.port, build(smuggled_request(token)), status)
    assert_not_smuggled(limited_proxy, backends, token)


def test_head_that_never_ends_is_cut_at_the_header_limit(limited_proxy: Proxy) -> None:
    """A head sent in many reads, none completing it: 431 long before it grows unbounded."""
    with limited_proxy.client(timeout=5) as client:
        client.send(b"GET /a HTTP/1.1\r\nHost: t\r\n")
        sent = 0
        reply = b""
        client.sock.settimeout(0.05)
        while sent < 256 * 1024:
            try:
                client.send(b"X-Filler-%d: %s\r\n" % (sent, b"f" * 1000))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1000
            try:
                reply = client.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            break
        assert reply.startswith(b"HTTP/1.1 431 "), (sent, reply)
        assert sent <= 4 * 4096, f"{sent} bytes of head accepted with max_header_bytes = 4096"


@pytest.fixture(scope="module")
def impatient_proxy(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    """A proxy that gives up on a silent backend after 1 s (so a stuck request ends fast)."""
    return start_proxy([b.url for b in backends], "[timeouts]\nupstream_response = 1\n")


def read_more(client: RawClient, seconds: float) -> bytes:
    """Whatever else arrives within `seconds` (b"" also when the connection closes)."""
    client.sock.settimeout(seconds)
    try:
        return client.buffer + client.sock.recv(65536)
    except (TimeoutError, ConnectionResetError):
        return client.buffer


def test_upgrade_request_body_is_not_parsed_as_a_request(
    impatient_proxy: Proxy, backends: list[Backend]
) -> None:
    """Without a tunnel, an Upgrade request with a body is refused: llhttp would read the
    body as upgraded bytes, and parsing them as a request would be a desync."""
    token = uuid.uuid4().hex
    body = smuggled_request(token)
    with impatient_proxy.client(timeout=5) as client:
        client.send(
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        response = client.read_response()
        after = read_more(client, 1.0)  # an answer to a second request, if one was parsed
    assert_not_smuggled(impatient_proxy, backends, token)
    assert after == b"", f"a response to a request the client never sent: {after!r}"
    assert response.status == 400, (response.status, response.body)
    assert response.header("Connection") == "close"


def test_http10_with_transfer_encoding_closes_the_connection(
    proxy: Proxy, backends: list[Backend]
) -> None:
    token = uuid.uuid4().hex
    with proxy.client(timeout=5) as client:
        client.send(
            b"POST /sha256 HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\n%s" % smuggled_request(token)
        )
        response = client.read_response()
        closed = client.is_closed(timeout=2)
        after = client.buffer
    assert response.status == 400, (response.status, response.body)
    assert_not_smuggled(proxy, backends, token)
    assert closed, f"connection kept open; then received {after!r}"


# -- limits are not off by one --------------------------------------------------------------------


def test_body_at_the_limit_passes(limited_proxy: Proxy) -> None:
    body = b"z" * MAX_BODY
    expected = f"{hashlib.sha256(body).hexdigest()} {MAX_BODY}".encode()
    with limited_proxy.client(timeout=5) as client:
        assert client.request("POST", "/sha256", body).body == expected
        client.send(
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk(body[:600])
            + chunk(body[600:])
            + b"0\r\n\r\n"
        )
        response = client.read_response()
    assert response.status == 200
    assert response.body == expected


def test_request_line_and_headers_under_the_limits_pass(limited_proxy: Proxy) -> None:
    target = "/echo-headers?" + "q" * 900
    with limited_proxy.client(timeout=5) as client:
        headers = {f"X-H{i}": "v" for i in range(18)}  # with Host: 19 fields, limit 20
        response = client.request("GET", target, headers=headers)
    assert response.status == 200
    assert json.loads(response.body)["request_line"] == f"GET {target}"


# -- valid variants are accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transfer_encoding", "body"),
    [
        (b"gzip, chunked", chunk(b"hello") + chunk(b" world") + b"0\r\n\r\n"),
        (b"chunked", b'3;x=y\r\nhel\r\n8;a;b="c d"\r\nlo world\r\n0\r\n\r\n'),
        (b"Chunked", chunk(b"hello world") + b"0\r\n\r\n"),
        (b"chunked", chunk(b"hello world") + b"0\r\nX-Trailer: t\r\n\r\n"),
    ],
    ids=["gzip-then-chunked", "chunk-extensions", "chunked-mixed-case", "trailer"],
)
def test_valid_chunked_variants_accepted(
    proxy: Proxy, transfer_encoding: bytes, body: bytes
) -> None:
    expected = f"{hashlib.sha256(b'hello world').hexdigest()} 11".encode()
    with proxy.client(timeout=5) as client:
        client.send(
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: %s\r\n\r\n%s"
            % (transfer_encoding, body)
        )
        response = client.read_response()
        assert response.status == 200
        assert response.body == expected
        # The connection is still in sync: the next request on it is answered.
        assert client.request("GET", "/size/3").status == 200


def test_gzip_chunked_coding_is_forwarded(proxy: Proxy) -> None:
    """The coding before chunked stays; the backend still gets a chunked message."""
    with proxy.client(timeout=5) as client:
        client.send(
            b"POST /echo-headers HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            + chunk(b"abc")
            + b"0\r\n\r\n"
        )
        response = client.read_response()
    assert response.status == 200
    headers = {k.lower(): v for k, v in json.loads(response.body)["headers"]}
    assert headers["transfer-encoding"] == "gzip, chunked"
    assert "content-length" not in headers


# -- upstream responses that break their framing ------------------------------------------------


def test_bad_upstream_framing_never_looks_complete(proxy: Proxy) -> None:
    """``/bad-framing``: a chunk of 5, then a chunk-size line ``zz``."""
    with proxy.client(timeout=5) as client:
        client.send(b"GET /bad-framing HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = client.read_all()  # returns at the close; a hang raises TimeoutError
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"zz" not in body, "the broken chunk line was relayed"
    assert not body.endswith(b"0\r\n\r\n"), f"the chunked body was terminated: {body!r}"
    with RawClient(proxy.port, timeout=5) as again:
        again.send(b"GET /bad-framing HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(ConnectionError):
            again.read_response()


def test_upstream_dying_mid_body_closes_the_client(proxy: Proxy) -> None:
    """``/die``: Content-Length 100, 10 bytes sent, then the backend closes."""
    with proxy.client(timeout=5) as client:
        client.send(b"GET /die HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = client.read_all()  # returns at the close; a hang raises TimeoutError
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    assert b"content-length: 100" in head.lower()
    assert len(body) < 100
    assert body == b"0123456789"[: len(body)]
