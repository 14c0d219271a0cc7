"""Timeouts on both sides, and the errors the proxy answers itself (502, 503, 504).

The proxy here runs with half-second timeouts so each case takes about a second. Waits
are on conditions with deadlines (socket timeouts, `wait_for`), never on sleeps.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import RawClient

TIMEOUT = 0.5
# A timeout must not fire much before it is due, and must fire well before this.
LATE = 3.0


def timeouts(**overrides: float) -> str:
    """A ``[timeouts]`` section: every timeout at TIMEOUT unless overridden."""
    values = dict.fromkeys(
        ("connect", "header", "body_idle", "upstream_response", "keepalive"), TIMEOUT
    )
    values.update(overrides)
    return "[timeouts]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())


FAST = timeouts()


@pytest.fixture(scope="module")
def fast_proxy(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    """A proxy over both backends with half-second timeouts."""
    return start_proxy([b.url for b in backends], FAST)


@pytest.fixture(scope="module")
def body_idle_proxy(start_proxy: StartProxy, backends: list[Backend]) -> Proxy:
    """Half-second timeouts, but a longer upstream response timeout: a stalled upload
    meets the body-idle timeout first, whatever the order of two timers due together."""
    return start_proxy([b.url for b in backends], timeouts(upstream_response=LATE))


def unused_port() -> int:
    """A port nobody listens on: bound by us, read, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_reply(client: RawClient, seconds: float) -> None:
    """Nothing arrives (and the connection stays open) for `seconds`."""
    client.sock.settimeout(seconds)
    try:
        data = client.sock.recv(65536)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected reply (b'' is a close): {data!r}")


def assert_timed_out_with(client: RawClient, status: int, started: float) -> None:
    """A `status` answer came after the timeout was due, then the connection closed."""
    response = client.read_response()
    elapsed = time.monotonic() - started
    assert response.status == status, (response.status, response.body)
    assert TIMEOUT * 0.8 <= elapsed < LATE, f"answered after {elapsed:.2f}s"
    assert response.header("Connection") == "close"
    assert client.is_closed(timeout=LATE)


# -- client side: head, body, keep-alive ---------------------------------------------------------


def test_stalled_head_gets_408_and_close(fast_proxy: Proxy) -> None:
    with fast_proxy.client(timeout=LATE) as client:
        started = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        assert_timed_out_with(client, 408, started)


def test_trickled_head_does_not_restart_the_header_clock(fast_proxy: Proxy) -> None:
    """Slowloris: one byte at a time keeps data flowing, but the head must end in time."""
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 10_000
    with fast_proxy.client(timeout=LATE) as client:
        started = time.monotonic()
        reply = b""
        client.sock.settimeout(0.05)  # paces the trickle: one byte per quiet 50 ms
        for byte in head:
            try:
                client.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                reply = client.sock.recv(65536)
                break
            except TimeoutError:
                if time.monotonic() - started > LATE:
                    break
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert elapsed < LATE, f"answered after {elapsed:.2f}s"


def test_first_head_in_pieces_within_the_timeout_is_answered(fast_proxy: Proxy) -> None:
    """The first head's clock runs from connect, watched by the listener's sweep rather
    than a timer of the connection's own: a head finished in time is proxied."""
    with fast_proxy.client(timeout=LATE) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        assert_no_reply(client, TIMEOUT / 2)
        client.send(b"\r\n")
        response = client.read_response()
    assert response.status == 200, (response.status, response.body)


def test_silent_connections_are_each_closed_in_time(fast_proxy: Proxy) -> None:
    """Connections made at different moments each get their own header deadline."""
    with fast_proxy.client(timeout=LATE) as first:
        first_started = time.monotonic()
        assert_no_reply(first, TIMEOUT / 2)
        with fast_proxy.client(timeout=LATE) as second:
            second_started = time.monotonic()
            assert first.is_closed(timeout=LATE)
            first_elapsed = time.monotonic() - first_started
            assert second.is_closed(timeout=LATE)
            second_elapsed = time.monotonic() - second_started
    for elapsed in (first_elapsed, second_elapsed):
        assert TIMEOUT * 0.8 <= elapsed < LATE, f"closed after {elapsed:.2f}s"


def test_silent_connection_is_closed(fast_proxy: Proxy) -> None:
    with fast_proxy.client(timeout=LATE) as client:
        started = time.monotonic()
        assert client.is_closed(timeout=LATE)
        elapsed = time.monotonic() - started
        assert client.buffer == b"", "a connection that said nothing gets no response"
    assert TIMEOUT * 0.8 <= elapsed < LATE


def test_stalled_body_gets_408_and_close(body_idle_proxy: Proxy) -> None:
    with body_idle_proxy.client(timeout=LATE) as client:
        started = time.monotonic()
        client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        assert_timed_out_with(client, 408, started)


def test_stalled_chunked_body_gets_408_and_close(body_idle_proxy: Proxy) -> None:
    with body_idle_proxy.client(timeout=LATE) as client:
        started = time.monotonic()
        client.send(
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
        )
        assert_timed_out_with(client, 408, started)


def test_slow_body_within_the_idle_timeout_is_accepted(fast_proxy: Proxy) -> None:
    """Pieces every 0.3 s: each restarts both the client body clock and the upstream one,
    so an upload lasting longer than either timeout still goes through."""
    pieces = [b"x" * 10] * 5
    with fast_proxy.client(timeout=LATE) as client:
        client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n")
        for piece in pieces:
            assert_no_reply(client, 0.3)
            client.send(piece)
        response = client.read_response()
    assert response.status == 200, (response.status, response.body)
    assert response.body.endswith(b" 50")


def test_upload_pause_within_body_idle_is_not_an_upstream_timeout(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    proxy = start_proxy([backends[0].url], timeouts(body_idle=LATE, upstream_response=TIMEOUT))
    with proxy.client(timeout=LATE) as client:
        client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        # The backend waits for the body: the wait is the client's, within body_idle.
        assert_no_reply(client, 2 * TIMEOUT)
        client.send(b"x" * 90)
        response = client.read_response()
    assert response.status == 200, (response.status, response.body)
    assert response.body.endswith(b" 100")


def test_idle_keepalive_connection_is_closed(fast_proxy: Proxy) -> None:
    with fast_proxy.client(timeout=LATE) as client:
        response = client.request("GET", "/")
        assert response.status == 200
        assert response.header("Connection") != "close"
        started = time.monotonic()
        assert client.is_closed(timeout=LATE)
        elapsed = time.monotonic() - started
        assert client.buffer == b""
    assert TIMEOUT * 0.8 <= elapsed < LATE, f"closed after {elapsed:.2f}s"


def test_keepalive_connection_stays_open_while_used(fast_proxy: Proxy) -> None:
    """Requests closer together than the keep-alive timeout keep one connection alive."""
    with fast_proxy.client(timeout=LATE) as client:
        for _ in range(4):
            assert client.request("GET", "/").status == 200
            assert_no_reply(client, TIMEOUT / 2)
        assert client.request("GET", "/").status == 200


def test_stalled_second_head_on_keepalive_connection_gets_408(fast_proxy: Proxy) -> None:
    with fast_proxy.client(timeout=LATE) as client:
        assert client.request("GET", "/").status == 200
        started = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHo")
        assert_timed_out_with(client, 408, started)


def test_slow_client_does_not_block_others(proxy: Proxy) -> None:
    """With the default 10 s header timeout: stalled clients wait, others are served."""
    stalled_head = proxy.client(timeout=5)
    stalled_body = proxy.client(timeout=5)
    try:
        stalled_head.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Half: ")
        stalled_body.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        for _ in range(20):
            with proxy.client(timeout=2) as other:
                assert other.request("GET", "/size/10").status == 200
        # The stalled ones were neither answered nor dropped meanwhile...
        assert not stalled_head.is_closed(timeout=0.05)
        assert not stalled_body.is_closed(timeout=0.05)
        assert stalled_head.buffer == stalled_body.buffer == b""
        # ...and can still finish their requests.
        stalled_head.send(b"x\r\n\r\n")
        assert stalled_head.read_response().status == 200
        stalled_body.send(b"d" * 97)
        response = stalled_body.read_response()
        assert response.status == 200
        assert response.body.endswith(b" 100")
    finally:
        stalled_head.close()
        stalled_body.close()


# -- upstream side: response timeout, connect failures, empty pool, broken responses ----------


def test_upstream_response_timeout_gives_504(fast_proxy: Proxy) -> None:
    with fast_proxy.client(timeout=LATE) as client:
        started = time.monotonic()
        client.send(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
        response = client.read_response()
        elapsed = time.monotonic() - started
        assert response.status == 504
        assert TIMEOUT * 0.8 <= elapsed < LATE, f"answered after {elapsed:.2f}s"
        # The request was complete and answered in full: the connection remains usable.
        assert client.request("GET", "/size/4").status == 200


# With active checks off, a dead server stays routable: the data plane's own error paths
# (502, the retry on another server) are what answers.
NO_CHECKS = "[pools.default.health]\nenabled = false\n"


def test_refused_connection_gives_502(start_proxy: StartProxy) -> None:
    proxy = start_proxy([f"127.0.0.1:{unused_port()}"], FAST + NO_CHECKS)
    with proxy.client(timeout=LATE) as client:
        for _ in range(3):
            response = client.request("GET", "/")
            assert response.status == 502, (response.status, response.body)


def test_server_failing_its_checks_is_not_routed_503(start_proxy: StartProxy) -> None:
    proxy = start_proxy([f"127.0.0.1:{unused_port()}"], FAST)
    with proxy.client(timeout=LATE) as client:
        response = client.request("GET", "/")
    assert response.status == 503, (response.status, response.body)
    assert response.header("Retry-After") == "1"


def test_connect_failure_is_retried_on_the_other_server(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    live = backends[0]
    proxy = start_proxy([f"127.0.0.1:{unused_port()}", live.url], FAST + NO_CHECKS)
    answers = []
    with proxy.client(timeout=LATE) as client:
        for _ in range(10):
            answers.append(client.request("GET", "/"))
    for _ in range(10):
        with proxy.client(timeout=LATE) as client:
            answers.append(client.request("GET", "/"))
    assert [a.status for a in answers] == [200] * 20
    assert {a.body for a in answers} == {b"ok %d\n" % live.port}


def test_empty_pool_gives_503_with_retry_after(start_proxy: StartProxy) -> None:
    proxy = start_proxy([], FAST)
    with proxy.client(timeout=LATE) as client:
        response = client.request("GET", "/")
    assert response.status == 503
    retry_after = response.header("Retry-After")
    assert retry_after is not None
    assert retry_after.isdigit()


def test_upstream_closing_mid_response_closes_the_client(fast_proxy: Proxy) -> None:
    """``/die`` announces 100 bytes, sends 10 and closes: the client must see a close."""
    with fast_proxy.client(timeout=LATE) as client:
        client.send(b"GET /die HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(ConnectionError):
            client.read_response()
        assert client.is_closed(timeout=LATE)
    with fast_proxy.client(timeout=LATE) as client:
        assert client.request("GET", "/size/4").status == 200  # the proxy is fine
