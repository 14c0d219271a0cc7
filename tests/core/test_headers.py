from __future__ import annotations

import pytest

from bunancer.core import headers
from bunancer.core.errors import ProxyError
from bunancer.core.headers import (
    ForwardingOptions,
    build_request_head,
    forwarding_lines,
    scan_request_headers,
    scan_response_headers,
)


def lines(head_lines: list[bytes]) -> list[bytes]:
    return b"".join(head_lines).split(b"\r\n")[:-1]


def test_request_hop_by_hop_and_connection_named_headers_dropped() -> None:
    head = scan_request_headers(
        [
            (b"Host", b"a.test"),
            (b"X-Private", b"1"),
            (b"Connection", b"keep-alive, X-Private"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Upgrade", b"websocket"),
            (b"Accept", b"*/*"),
        ]
    )
    assert lines(head.lines) == [b"Host: a.test", b"Accept: */*"]
    assert head.host == b"a.test"
    assert head.upgrade is False


def test_connection_cannot_make_host_hop_by_hop() -> None:
    head = scan_request_headers(
        [
            (b"Host", b"a.test"),
            (b"X-One", b"1"),
            (b"Connection", b"Host, x-one, X-Two"),
            (b"Expect", b"100-continue"),
            (b"X-Two", b"2"),
            (b"X-Three", b"3"),
        ]
    )
    assert lines(head.lines) == [b"Host: a.test", b"Expect: 100-continue", b"X-Three: 3"]


def test_request_facts() -> None:
    head = scan_request_headers(
        [
            (b"host", b"h"),
            (b"Content-Length", b" 12 "),
            (b"Expect", b"100-continue"),
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2"),
            (b"Forwarded", b"for=1.1.1.1"),
            (b"X-Forwarded-Proto", b"https"),
            (b"Connection", b"Upgrade"),
        ]
    )
    assert head.content_length == b"12"
    assert head.expect_continue is True
    assert head.x_forwarded_for == b"1.1.1.1, 2.2.2.2"
    assert head.forwarded == b"for=1.1.1.1"
    assert head.upgrade is True
    assert lines(head.lines) == [b"host: h", b"Expect: 100-continue"]


def test_two_host_headers_rejected() -> None:
    with pytest.raises(ProxyError) as info:
        scan_request_headers([(b"Host", b"a"), (b"host", b"b")])
    assert info.value.status == 400


def test_build_request_head() -> None:
    head = scan_request_headers([(b"Host", b"a.test"), (b"X-Forwarded-For", b"9.9.9.9")])
    forwarding = forwarding_lines(head, "10.0.0.2", ForwardingOptions())
    data = build_request_head(b"POST", b"/p?q", head, forwarding, b"Content-Length: 3\r\n")
    assert data == (
        b"POST /p?q HTTP/1.1\r\nHost: a.test\r\n"
        b"X-Forwarded-For: 9.9.9.9, 10.0.0.2\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: a.test\r\n"
        b'Forwarded: for=10.0.0.2;proto=http;host="a.test"\r\n'
        b"Via: 1.1 bunancer\r\nContent-Length: 3\r\n\r\n"
    )


def test_forwarded_quotes_ipv6_and_options_turn_headers_off() -> None:
    head = scan_request_headers([(b"Host", b"h"), (b"Forwarded", b"for=1.2.3.4")])
    lines_ = forwarding_lines(head, "::1", ForwardingOptions(x_forwarded=False))
    assert (
        lines_
        == b'Forwarded: for=1.2.3.4, for="[::1]";proto=http;host="h"\r\nVia: 1.1 bunancer\r\n'
    )
    off = ForwardingOptions(forwarded=False, x_forwarded=False, via=False)
    assert forwarding_lines(head, "::1", off) == b""
    assert build_request_head(b"GET", b"/", head, b"", b"") == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_response_headers() -> None:
    head = scan_response_headers(
        [
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b"5"),
            (b"Connection", b"close, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=1"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
    )
    assert lines(head.lines) == [
        b"Content-Type: text/plain",
        b"Set-Cookie: a=1",
        b"Set-Cookie: b=2",
    ]
    assert head.content_length == b"5"
    assert head.chunked is False
    assert scan_response_headers([(b"Transfer-Encoding", b"gzip, Chunked")]).chunked is True
    assert scan_response_headers([(b"Transfer-Encoding", b"gzip")]).chunked is False


def test_names_are_classified_in_any_spelling_and_their_memory_is_bounded() -> None:
    """Names are remembered per spelling: a flood of new ones cannot grow memory, and an
    unusual spelling of a special name is as special from memory as the first time."""
    for index in range(1500):
        scan_request_headers([(b"X-Flood-%d" % index, b"1")])
        scan_response_headers([(b"X-Flood-%d" % index, b"1")])
    assert 0 < len(headers._REQUEST_KINDS.memory) <= 1024
    assert 0 < len(headers._RESPONSE_KINDS.memory) <= 1024
    request = [(b"HOST", b"h"), (b"CONNECTION", b"close, X-A"), (b"X-A", b"1"), (b"x-b", b"2")]
    response = [(b"CONTENT-LENGTH", b"5"), (b"KEEP-ALIVE", b"timeout=5"), (b"X-C", b"3")]
    for _ in range(2):  # the first time computed, the second from memory
        head = scan_request_headers(request)
        assert head.host == b"h"
        assert head.connection_header
        assert lines(head.lines) == [b"HOST: h", b"x-b: 2"]
        answer = scan_response_headers(response)
        assert answer.content_length == b"5"
        assert lines(answer.lines) == [b"X-C: 3"]


def test_no_special_name_passes_for_ordinary_whatever_its_spelling() -> None:
    """Names are first told apart by length: every special one must still be caught."""
    kept_in_requests = {b"host", b"expect"}  # handled, then forwarded
    for name in sorted(headers._REQUEST_SPECIAL - kept_in_requests):
        for spelling in (name, name.upper(), name.title()):
            assert scan_request_headers([(spelling, b"1")]).lines == [b""], spelling
    for name in sorted(headers._RESPONSE_SPECIAL):
        for spelling in (name, name.upper(), name.title()):
            assert scan_response_headers([(spelling, b"1")]).lines == [b""], spelling
    assert scan_request_headers([(b"HOST", b"h")]).host == b"h"
    assert scan_request_headers([(b"Expect", b"100-continue")]).expect_continue
    # Names of other lengths are copied as they are.
    ordinary = [(b"Content-Type", b"text/plain"), (b"Date", b"x"), (b"X-Stub-Id", b"s1")]
    assert lines(scan_response_headers(ordinary).lines) == [
        b"Content-Type: text/plain",
        b"Date: x",
        b"X-Stub-Id: s1",
    ]
