from __future__ import annotations

import pytest

from bunancer.core.errors import STATUS_LINES, ProxyError, error_response
from bunancer.core.framing import (
    CHECKED_HOSTS,
    Body,
    check_host,
    check_target,
    check_version,
    downstream_body,
    encode_chunk,
    response_body,
    sniff_version,
)


def test_encode_chunk() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"


@pytest.mark.parametrize(
    ("status", "head", "length", "chunked", "expected"),
    [
        (200, False, True, False, Body.LENGTH),
        (200, False, False, True, Body.CHUNKED),
        (200, False, False, False, Body.UNTIL_CLOSE),
        (200, True, True, False, Body.NONE),
        (204, False, False, False, Body.NONE),
        (304, False, True, False, Body.NONE),
        (101, False, False, False, Body.NONE),
        (404, False, False, True, Body.CHUNKED),
    ],
)
def test_response_body(
    status: int, head: bool, length: bool, chunked: bool, expected: Body
) -> None:
    assert response_body(status, head, length, chunked) is expected


def test_downstream_body_reframes_for_each_client() -> None:
    assert downstream_body(Body.LENGTH, True) is Body.LENGTH
    assert downstream_body(Body.LENGTH, False) is Body.LENGTH
    assert downstream_body(Body.CHUNKED, True) is Body.CHUNKED
    assert downstream_body(Body.CHUNKED, False) is Body.UNTIL_CLOSE
    assert downstream_body(Body.UNTIL_CLOSE, True) is Body.CHUNKED
    assert downstream_body(Body.UNTIL_CLOSE, False) is Body.UNTIL_CLOSE
    assert downstream_body(Body.NONE, False) is Body.NONE


@pytest.mark.parametrize(
    ("read", "version"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\n", True),
        (b"GET / HTTP/1.1", None),  # the line goes on in a later read
        (b"GET / HTTP/2.0\r\n\r\n", None),  # left to check_version
        (b"\r\nGET / HTTP/1.1\r\n\r\n", None),  # an empty line first
        (b"\nGET / HTTP/1.1\r\n\r\n", None),
        (b"GET / HTTP/1.0\nX: HTTP/1.1\r\n\r\n", None),  # a bare LF ends the line
        (b"", None),
    ],
)
def test_sniff_version_reads_only_what_the_request_line_says(
    read: bytes, version: bool | None
) -> None:
    assert sniff_version(read, len(b"GET /")) is version


def test_check_version() -> None:
    assert check_version("1.1") is True
    assert check_version("1.0") is False
    for bad in ("2.0", "0.9", "1.2"):
        with pytest.raises(ProxyError) as info:
            check_version(bad)
        assert info.value.status == 505


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        (b"GET", b"/a#frag", 400),
        (b"GET", b"a/b", 400),
        (b"GET", b"*", 400),
        (b"CONNECT", b"host:443", 405),
    ],
)
def test_check_target_rejects(method: bytes, target: bytes, status: int) -> None:
    with pytest.raises(ProxyError) as info:
        check_target(method, target)
    assert info.value.status == status


@pytest.mark.parametrize(
    ("method", "target"),
    [(b"GET", b"/"), (b"OPTIONS", b"*"), (b"GET", b"http://a/b"), (b"GET", b"HTTPS://a/")],
)
def test_check_target_accepts(method: bytes, target: bytes) -> None:
    check_target(method, target)


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"user@a", b"a,b", b"a\tb", b"a?b"])
def test_check_host_rejects(host: bytes) -> None:
    with pytest.raises(ProxyError):
        check_host(host)


@pytest.mark.parametrize("host", [b"example.com", b"example.com:8080", b"[::1]:80", b""])
def test_check_host_accepts(host: bytes) -> None:
    check_host(host)
    assert host in CHECKED_HOSTS  # the next request with it skips the regex


def test_checked_hosts_stay_small() -> None:
    long_host = b"a" * 1000
    check_host(long_host)
    assert long_host not in CHECKED_HOSTS
    for index in range(3000):
        check_host(b"host-%d.test" % index)
    assert 0 < len(CHECKED_HOSTS) <= 1024


def test_error_responses_are_complete_messages() -> None:
    response = error_response(503)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1" in head
    assert b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head
    assert b"Connection: keep-alive" in error_response(502, True)
    assert STATUS_LINES[200] == b"HTTP/1.1 200 OK\r\n"
    assert STATUS_LINES[418] == b"HTTP/1.1 418 I'm a Teapot\r\n"
    assert STATUS_LINES[299] == b"HTTP/1.1 299 \r\n"
