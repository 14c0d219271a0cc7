"""The server name in a ClientHello: real ClientHellos written by OpenSSL (through Python's
ssl module into a memory BIO), whole and cut at every length."""

from __future__ import annotations

import ssl

import pytest

from bunancer.core.clienthello import MAX_HELLO, server_name


def client_hello(name: str | None, **versions: ssl.TLSVersion) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for attribute, version in versions.items():
        setattr(context, attribute, version)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_name_is_read_from_a_whole_hello(version: ssl.TLSVersion) -> None:
    hello = client_hello("Shop.Example.COM", maximum_version=version)
    assert server_name(hello) == (True, "shop.example.com")
    assert server_name(hello + b"more bytes") == (True, "shop.example.com")


def test_a_hello_without_a_name() -> None:
    assert server_name(client_hello(None)) == (True, None)


def test_every_cut_short_of_the_whole_asks_for_more() -> None:
    hello = client_hello("a.example")
    for cut in range(len(hello)):
        assert server_name(hello[:cut]) == (False, None), cut


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # plain HTTP
        b"\x16\x01\x00\x00\x05hello",  # a handshake record of no TLS version
        b"SSH-2.0-OpenSSH\r\n",
        b"\x16\x03\x01" + (MAX_HELLO + 1).to_bytes(2, "big"),  # longer than any we route by
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a handshake that is not a ClientHello
        b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03",  # a ClientHello cut inside itself
    ],
)
def test_bytes_that_are_not_a_hello_decide_at_once(data: bytes) -> None:
    assert server_name(data) == (True, None)


def test_a_tls_record_start_waits() -> None:
    assert server_name(b"\x16") == (False, None)
    assert server_name(b"\x16\x03\x01") == (False, None)
