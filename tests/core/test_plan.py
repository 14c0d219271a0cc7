"""From a parsed request head to what goes upstream (core/plan.py), with bytes only."""

from __future__ import annotations

import pytest

from bunancer.core.errors import ProxyError
from bunancer.core.headers import ForwardingOptions, scan_request_headers
from bunancer.core.plan import (
    FORWARDING_CACHE_SIZE,
    ForwardingCache,
    absolute_form,
    add_host,
    check_head_size,
    framing_lines,
    has_body,
)
from bunancer.core.settings import ListenerSettings

SETTINGS = ListenerSettings(max_headers=3, max_header_bytes=100, max_body_bytes=1000)


def status_of(error: pytest.ExceptionInfo[ProxyError]) -> int:
    return error.value.status


def test_a_head_over_either_limit_is_431() -> None:
    check_head_size(3, 88, SETTINGS)  # 88 bytes + 4 per field (": " and CRLF) = 100
    with pytest.raises(ProxyError) as too_many:
        check_head_size(4, 10, SETTINGS)
    assert status_of(too_many) == 431
    with pytest.raises(ProxyError) as too_big:
        check_head_size(3, 89, SETTINGS)
    assert status_of(too_big) == 431


def test_an_absolute_target_becomes_a_path_and_its_authority_the_host() -> None:
    path, headers = absolute_form(
        b"http://example.com:8080/a/b?x=1", [(b"Host", b"other"), (b"Accept", b"*/*")]
    )
    assert path == b"/a/b?x=1"
    assert headers == [(b"Accept", b"*/*"), (b"Host", b"example.com:8080")]
    path, headers = absolute_form(b"http://example.com", [])
    assert (path, headers) == (b"/", [(b"Host", b"example.com")])


@pytest.mark.parametrize("target", [b"http://", b"http:///path"])
def test_an_absolute_target_without_a_host_is_400(target: bytes) -> None:
    with pytest.raises(ProxyError) as error:
        absolute_form(target, [])
    assert status_of(error) == 400


def test_a_request_without_host_is_400_in_http11_and_gets_the_local_address_in_http10() -> None:
    with pytest.raises(ProxyError) as raised:
        add_host(scan_request_headers([]), True, ("127.0.0.1", 8080))
    assert raised.value.status == 400
    for sockname, host in ((("127.0.0.1", 8080), b"127.0.0.1:8080"), (("::1", 443), b"[::1]:443")):
        head = scan_request_headers([(b"Accept", b"*/*")])
        add_host(head, False, sockname)
        assert head.host == host
        assert b"".join(head.lines[1:]) == b"Accept: */*\r\nHost: " + host + b"\r\n"


def test_framing_lines_carry_the_length_or_the_coding_or_the_upgrade() -> None:
    sized = scan_request_headers([(b"Host", b"a"), (b"Content-Length", b"12")])
    assert framing_lines(sized, True, False, SETTINGS) == b"Content-Length: 12\r\n"
    assert has_body(sized)
    chunked = scan_request_headers([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")])
    assert framing_lines(chunked, True, False, SETTINGS) == b"Transfer-Encoding: chunked\r\n"
    assert has_body(chunked)
    upgrade = scan_request_headers(
        [(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    )
    assert framing_lines(upgrade, True, True, SETTINGS) == (
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    )
    bare = scan_request_headers([(b"Host", b"a"), (b"Content-Length", b"0")])
    assert not has_body(bare)


def test_a_body_over_the_limit_is_413() -> None:
    too_long = scan_request_headers([(b"Host", b"a"), (b"Content-Length", b"1001")])
    with pytest.raises(ProxyError) as error:
        framing_lines(too_long, True, False, SETTINGS)
    assert status_of(error) == 413


def test_framing_llhttp_accepts_but_a_proxy_must_not_pass_on_is_400() -> None:
    chunked = scan_request_headers([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")])
    with pytest.raises(ProxyError) as error:
        framing_lines(chunked, False, False, SETTINGS)  # HTTP/1.0
    assert status_of(error) == 400
    upgrade_with_body = scan_request_headers(
        [
            (b"Host", b"a"),
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"websocket"),
            (b"Content-Length", b"5"),
        ]
    )
    with pytest.raises(ProxyError) as error:
        framing_lines(upgrade_with_body, True, True, SETTINGS)
    assert status_of(error) == 400


def test_forwarding_lines_are_kept_per_client_and_host_but_never_for_forwarded_heads() -> None:
    cache = ForwardingCache(ForwardingOptions())
    head = scan_request_headers([(b"Host", b"a")])
    first = cache.get(head, "10.0.0.1")
    assert b"X-Forwarded-For: 10.0.0.1\r\n" in first
    assert cache.get(scan_request_headers([(b"Host", b"a")]), "10.0.0.1") is first
    assert cache.get(head, "10.0.0.2") != first
    relayed = scan_request_headers([(b"Host", b"a"), (b"X-Forwarded-For", b"192.0.2.9")])
    lines = cache.get(relayed, "10.0.0.1")
    assert b"X-Forwarded-For: 192.0.2.9, 10.0.0.1\r\n" in lines
    assert len(cache.lines) == 2  # the relayed head was not cached


def test_the_forwarding_cache_starts_over_when_full() -> None:
    cache = ForwardingCache(ForwardingOptions())
    head = scan_request_headers([(b"Host", b"a")])
    for i in range(FORWARDING_CACHE_SIZE + 1):
        cache.get(head, f"10.0.{i // 256}.{i % 256}")
    assert len(cache.lines) == 1
