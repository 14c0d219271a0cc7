from __future__ import annotations

import pytest

from bunancer.core.proxyproto import (
    V2_SIGNATURE,
    Addresses,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    looks_like_header,
    parse,
    starts_with_header,
)

V4 = Addresses("192.0.2.1", 51234, "198.51.100.2", 443)
V6 = Addresses("2001:db8::1", 1, "2001:db8::2", 65535)


def test_v1_round_trip_and_exact_bytes() -> None:
    header = encode_v1(V4)
    assert header == b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n"
    assert parse(header + b"GET /") == (V4, len(header))
    assert parse(encode_v1(V6))[0] == V6


def test_v2_round_trip_and_exact_bytes() -> None:
    header = encode_v2(V4)
    assert header[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert header[12:16] == b"\x21\x11\x00\x0c"  # v2 PROXY, TCP over IPv4, 12 bytes
    assert header[16:] == bytes([192, 0, 2, 1, 198, 51, 100, 2]) + b"\xc8\x22\x01\xbb"
    assert parse(header + b"rest") == (V4, 28)
    assert parse(encode_v2(V6)) == (V6, 52)


def test_partial_headers_ask_for_more() -> None:
    for header in (encode_v1(V4), encode_v2(V6)):
        for cut in (1, 5, 11, len(header) - 1):
            assert parse(header[:cut]) == (None, 0), cut
            assert looks_like_header(header[:cut])


def test_local_and_unknown() -> None:
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert parse(local) == (None, 16)
    assert parse(b"PROXY UNKNOWN\r\nx") == (None, 15)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 x y 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY " + b"1" * 120,
        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4),
    ],
)
def test_malformed_headers_are_errors(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_plain_data_does_not_look_like_a_header() -> None:
    assert not looks_like_header(b"GET / HTTP/1.1")
    assert not looks_like_header(b"\x16\x03\x01")  # TLS


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"PROXY TCP4 ", True),
        (b"PROXY ", True),
        (V2_SIGNATURE + b"\x21", True),
        (b"PRO", None),  # could still become "PROXY "
        (V2_SIGNATURE[:5], None),
        (b"", None),
        (b"PROXZ", False),
        (b"PING\r\n", False),  # a Redis client, say
        (b"GET / HTTP/1.1\r\n", False),
    ],
)
def test_starts_with_header_decides_only_when_it_can(data: bytes, verdict: bool | None) -> None:
    assert starts_with_header(data) is verdict
