"""End-to-end proxying through a real `bunancer serve` process and real backends."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest

from tests.backend import pattern_bytes
from tests.conftest import Backend, Proxy, StartProxy
from tests.helpers import RawClient


def get_json(client: RawClient, path: str) -> dict:
    response = client.request("GET", path)
    assert response.status == 200, response
    return json.loads(response.body)


def test_round_robin_over_both_backends(proxy: Proxy, backends: list[Backend]) -> None:
    with proxy.client() as client:
        answers = [client.request("GET", "/").body for _ in range(6)]
    ports = {b.port for b in backends}
    seen = {int(a.split()[1]) for a in answers}
    assert seen == ports
    # strictly alternating
    assert answers[0] != answers[1]
    assert answers[0] == answers[2]


def test_method_path_and_query_reach_the_backend(proxy: Proxy) -> None:
    with proxy.client() as client:
        payload = get_json(client, "/echo-headers?a=1&b=%20x")
    assert payload["request_line"] == "GET /echo-headers?a=1&b=%20x"


def test_forwarding_headers_added_and_hop_by_hop_removed(proxy: Proxy) -> None:
    with proxy.client() as client:
        client.send(
            b"GET /echo-headers HTTP/1.1\r\nHost: example.test:8080\r\n"
            b"Connection: keep-alive, X-Secret\r\nX-Secret: drop me\r\nKeep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
            b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Keep: yes\r\n\r\n"
        )
        response = client.read_response()
    headers = {k.lower(): v for k, v in json.loads(response.body)["headers"]}
    for gone in ("connection", "x-secret", "keep-alive", "proxy-connection", "te", "trailer"):
        assert gone not in headers, gone
    assert "upgrade" not in headers
    assert headers["host"] == "example.test:8080"
    assert headers["x-keep"] == "yes"
    assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"  # the client's own claim is replaced
    assert headers["x-forwarded-host"] == "example.test:8080"
    assert headers["forwarded"] == 'for=127.0.0.1;proto=http;host="example.test:8080"'
    assert headers["via"] == "1.1 bunancer"


def test_response_hop_by_hop_headers_removed(proxy: Proxy) -> None:
    # The backend's /close response has no framing; the proxy re-frames it as chunked.
    with proxy.client() as client:
        response = client.request("GET", "/close/10")
        assert response.header("Transfer-Encoding") == "chunked"
        assert response.header("X-Close") == "1"
        assert response.body == pattern_bytes(10)
        # and the client connection stays usable
        assert client.request("GET", "/").status == 200


def test_keep_alive_reuses_upstream_connections(proxy: Proxy, backends: list[Backend]) -> None:
    with RawClient(backends[0].port) as direct:
        before = get_json(direct, "/log")["proxied_connections"]
    with proxy.client() as client:
        for _ in range(50):
            assert client.request("GET", "/").status == 200
    with RawClient(backends[0].port) as direct:
        after = get_json(direct, "/log")["proxied_connections"]
    # 25 requests reached backend 0 through the proxy, all on one pooled connection
    # (at most one new one: the pool may already have held it from earlier tests).
    assert after - before <= 1


def test_response_body_sizes_intact(proxy: Proxy) -> None:
    with proxy.client() as client:
        for size in (0, 1, 65535, 65536, 1024 * 1024):
            response = client.request("GET", f"/size/{size}")
            assert response.header("Content-Length") == str(size)
            assert response.body == pattern_bytes(size)
            chunked = client.request("GET", f"/chunked/{size}")
            assert chunked.header("Transfer-Encoding") == "chunked"
            assert chunked.body == pattern_bytes(size)


def _post_sha(client: RawClient, body: bytes, chunked: bool = False) -> tuple[str, int]:
    if chunked:
        pieces = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 10000]), body[i : i + 10000])
            for i in range(0, len(body), 10000)
        )
        client.send(
            b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + pieces
            + b"0\r\n\r\n"
        )
        response = client.read_response()
    else:
        response = client.request("POST", "/sha256", body)
    digest, length = response.body.decode().split()
    return digest, int(length)


def test_request_bodies_intact(proxy: Proxy) -> None:
    with proxy.client() as client:
        for size in (0, 1, 100_000, 1024 * 1024):
            body = pattern_bytes(size)[::-1]
            expected = (hashlib.sha256(body).hexdigest(), size)
            assert _post_sha(client, body) == expected
            assert _post_sha(client, body, chunked=True) == expected


def test_head_204_304_have_no_body(proxy: Proxy) -> None:
    with proxy.client() as client:
        head = client.request("HEAD", "/size/1000")
        assert head.status == 200
        assert head.header("Content-Length") == "1000"
        assert head.body == b""
        for status in (204, 304):
            response = client.request("GET", f"/status/{status}")
            assert response.status == status
            assert response.body == b""
        # The connection is still in sync after bodiless responses.
        assert client.request("GET", "/size/5").body == pattern_bytes(5)


def test_pipelined_requests_answered_in_order(proxy: Proxy) -> None:
    paths = ["/sleep/150", "/size/3", "/sleep/50", "/size/7", "/echo-headers"]
    with proxy.client() as client:
        client.send(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p in paths))
        responses = [client.read_response() for _ in paths]
    assert responses[0].body == b"slept\n"
    assert responses[1].body == pattern_bytes(3)
    assert responses[2].body == b"slept\n"
    assert responses[3].body == pattern_bytes(7)
    assert json.loads(responses[4].body)["request_line"] == "GET /echo-headers"


def test_pipelined_with_bodies(proxy: Proxy) -> None:
    bodies = [b"a" * 10, b"b" * 70000, b""]
    with proxy.client() as client:
        client.send(
            b"".join(
                b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                for b in bodies
            )
        )
        for body in bodies:
            digest, length = client.read_response().body.decode().split()
            assert (digest, int(length)) == (hashlib.sha256(body).hexdigest(), len(body))


def test_http10_client(proxy: Proxy) -> None:
    with proxy.client() as client:
        client.send(b"GET /chunked/1000 HTTP/1.0\r\n\r\n")
        raw = client.read_all()  # HTTP/1.0 without keep-alive: the proxy closes
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()  # 1.0 clients do not get chunked
    assert body == pattern_bytes(1000)


def test_http10_request_without_host_gets_the_address_it_reached(proxy: Proxy) -> None:
    # Sent on as HTTP/1.1, which must carry a Host: without one a backend answers 400
    # (nginx does) and closes its kept-alive connection.
    with proxy.client() as client:
        client.send(b"GET /echo-headers HTTP/1.0\r\n\r\n")
        response = client.read_response()
    headers = {k.lower(): v for k, v in json.loads(response.body)["headers"]}
    assert headers["host"] == f"127.0.0.1:{proxy.port}"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"


def test_http10_keep_alive(proxy: Proxy) -> None:
    with proxy.client() as client:
        for _ in range(3):
            client.send(b"GET /size/10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = client.read_response()
            assert response.header("Connection") == "keep-alive"
            assert response.body == pattern_bytes(10)


def test_http10_proxy_connection_keep_alive_stays_http10(proxy: Proxy) -> None:
    # llhttp keeps this alive like a 1.1 request without Connection; the proxy must still
    # see 1.0: no Host needed, and "Connection: keep-alive" in the answer.
    with proxy.client() as client:
        for _ in range(2):
            client.send(b"GET /size/10 HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n")
            response = client.read_response()
            assert response.status == 200
            assert response.header("Connection") == "keep-alive"
            assert response.body == pattern_bytes(10)


def test_version_of_each_pipelined_request_is_its_own(proxy: Proxy) -> None:
    # Each of these names its connection, so the proxy must read the version of each
    # request, not of the first request line in the read that carried them.
    with proxy.client() as client:
        client.send(
            b"GET /size/10 HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n"
            b"GET /chunked/1000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        )
        assert client.read_response().body == pattern_bytes(10)
        raw = client.read_all()  # a 1.0 client: no chunking, so the body ends at close
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == pattern_bytes(1000)
    with proxy.client() as client:
        client.send(
            b"GET /size/10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"GET /size/10 HTTP/1.1\r\nConnection: close\r\n\r\n"  # 1.1 needs Host
        )
        assert client.read_response().body == pattern_bytes(10)
        assert client.read_response().status == 400


def test_version_of_a_request_line_split_over_reads(proxy: Proxy) -> None:
    for version, status in ((b"1.1", 400), (b"1.0", 200)):  # no Host: 1.1 must have one
        with proxy.client() as client:
            client.send(b"GET /size/10 HTTP/")
            client.send(version + b"\r\nConnection: close\r\n\r\n")
            assert client.read_response().status == status


def test_expect_100_continue(proxy: Proxy) -> None:
    body = b"x" * 5000
    with proxy.client() as client:
        client.send(
            b"POST /continue HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        # The backend's 100 Continue is relayed before we send the body.
        interim = client.sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        client.send(body)
        response = client.read_response()
    assert response.body.decode().split() == [hashlib.sha256(body).hexdigest(), "5000"]


def test_interim_and_final_heads_in_one_read_keep_their_order(proxy: Proxy) -> None:
    with proxy.client() as client:
        client.send(b"GET /early-hints HTTP/1.1\r\nHost: t\r\n\r\n")
        client.sock.settimeout(5)
        data = b""
        while not data.endswith(b"\r\n\r\nok"):
            chunk = client.sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 ")
    assert data.count(b"HTTP/1.1 ") == 2


@pytest.mark.parametrize(
    ("target", "line", "host"),
    [
        (b"http://other.test:81/echo-headers?q=1", "GET /echo-headers?q=1", "other.test:81"),
        (b"http://other.test/echo-headers?q=1", "GET /echo-headers?q=1", "other.test"),
        (b"http://other.test:81/echo-headers", "GET /echo-headers", "other.test:81"),
    ],
)
def test_absolute_form_target(proxy: Proxy, target: bytes, line: str, host: str) -> None:
    """Without a port or a query too (httptools' type stub says neither can be missing)."""
    with proxy.client() as client:
        client.send(b"GET %s HTTP/1.1\r\nHost: ignored\r\n\r\n" % target)
        payload = json.loads(client.read_response().body)
    headers = {k.lower(): v for k, v in payload["headers"]}
    assert payload["request_line"] == line
    assert headers["host"] == host


def test_connection_close_request_closes(proxy: Proxy) -> None:
    with proxy.client() as client:
        response = client.request("GET", "/", headers={"Connection": "close"})
        assert response.header("Connection") == "close"
        assert client.is_closed()


def test_many_clients_at_once(proxy: Proxy) -> None:
    clients = [proxy.client() for _ in range(50)]
    try:
        for client in clients:
            client.send(b"GET /size/100 HTTP/1.1\r\nHost: t\r\n\r\n")
        for client in clients:
            assert client.read_response().body == pattern_bytes(100)
    finally:
        for client in clients:
            client.close()


def test_client_disconnect_mid_response_does_not_break_proxy(proxy: Proxy) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"GET /size/10000000 HTTP/1.1\r\nHost: t\r\n\r\n")
    sock.recv(1000)
    sock.close()
    with proxy.client() as client:
        assert client.request("GET", "/size/3").body == pattern_bytes(3)


def test_upgrade_refused_by_backend_continues_as_http(proxy: Proxy) -> None:
    """An Upgrade request goes to the backend with Connection/Upgrade kept; a non-101
    answer is a normal response, and a request pipelined behind it is parsed next."""
    with proxy.client() as client:
        client.send(
            b"GET /echo-headers HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nGET /size/4 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        first = client.read_response()
        second = client.read_response()
    headers = {k.lower(): v for k, v in json.loads(first.body)["headers"]}
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "Upgrade"
    assert second.body == pattern_bytes(4)


def test_routes_choose_pools_first_match_then_default(
    start_proxy: StartProxy, backends: list[Backend]
) -> None:
    api, web = backends
    proxy = start_proxy(
        [web.url],
        f"""
        [pools.api]
        servers = [{{ address = "{api.url}" }}]

        [[routes]]
        host = "*.api.test"
        pool = "api"

        [[routes]]
        path_prefix = "/v1/"
        pool = "api"
        """,
    )
    with proxy.client() as client:

        def answer(path: str, host: str) -> bytes:
            client.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            return client.read_response().body

        assert answer("/", "eu.api.test") == b"ok %d\n" % api.port
        assert answer("/", "EU.API.TEST:8080") == b"ok %d\n" % api.port  # case, port ignored
        assert answer("/v1/users", "www.test") == b"ok %d\n" % api.port
        assert answer("/v2/users", "www.test") == b"ok %d\n" % web.port
        assert answer("/", "api.test") == b"ok %d\n" % web.port  # "*.api.test" is not the apex
